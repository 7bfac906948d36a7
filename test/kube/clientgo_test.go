package kube_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/kube"
)

// candidateEnv, when set, makes the test binary run as a client-go
// leader-election candidate (candidateMain) configured by the JSON of a
// candidateConfig in the variable.
const candidateEnv = "MPSYNC_KUBE_TEST_CANDIDATE"

// candidateConfig configures the candidate process.
type candidateConfig struct {
	Kubeconfig, Namespace, Name, Identity string
	LeaseDuration, RenewDeadline, Retry   time.Duration
	HoldMin, HoldMax, PauseMin, PauseMax  time.Duration
}

// between returns a random duration in [lo, hi].
func between(lo, hi time.Duration) time.Duration {
	return lo + rand.N(hi-lo+1)
}

// candidateMain runs terms of client-go leader election with a LeaseLock
// and ReleaseOnCancel, as controllers do, until its stdin closes. Each term
// it leads for a random while, then gives up (releasing the Lease) and
// pauses before campaigning again. It prints "start <unix ns>" when it
// begins leading and "stop <unix ns>" when it stops, on stdout.
func candidateMain() int {
	var cfg candidateConfig
	if err := json.Unmarshal([]byte(os.Getenv(candidateEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "candidate:", err)
		return 2
	}
	rc, err := kube.RESTConfig(cfg.Kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "candidate:", err)
		return 1
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "candidate:", err)
		return 1
	}
	ctx, stop := context.WithCancel(context.Background())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	var outMu sync.Mutex
	emit := func(what string) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Printf("%s %d\n", what, time.Now().UnixNano())
	}
	for ctx.Err() == nil {
		term, endTerm := context.WithCancel(ctx)
		var leading sync.WaitGroup
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: &resourcelock.LeaseLock{
				LeaseMeta:  metav1.ObjectMeta{Name: cfg.Name, Namespace: cfg.Namespace},
				Client:     cs.CoordinationV1(),
				LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
			},
			LeaseDuration:   cfg.LeaseDuration,
			RenewDeadline:   cfg.RenewDeadline,
			RetryPeriod:     cfg.Retry,
			ReleaseOnCancel: true,
			Name:            cfg.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					leading.Add(1)
					defer leading.Done()
					emit("start")
					var once sync.Once
					end := func() { once.Do(func() { emit("stop") }) }
					defer context.AfterFunc(lctx, end)()
					t := time.NewTimer(between(cfg.HoldMin, cfg.HoldMax))
					defer t.Stop()
					select {
					case <-t.C:
						end() // stop leading, then let go of the Lease
						endTerm()
					case <-lctx.Done():
						end()
					}
				},
				OnStoppedLeading: func() {},
			},
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "candidate:", err)
			endTerm()
			return 1
		}
		le.Run(term)
		endTerm()
		leading.Wait()
		t := time.NewTimer(between(cfg.PauseMin, cfg.PauseMax))
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	return 0
}

// interval is one term of leadership as its leader saw it.
type interval struct {
	who        string
	start, end time.Time
}

// TestClientGoCandidate: a client-go leader-election candidate (LeaseLock,
// ReleaseOnCancel; in a process of its own) and an mpsync Election through
// an elector contend for one Lease, each giving up leadership now and then.
// Their terms, as each side saw them, never overlap, and both lead.
func TestClientGoCandidate(t *testing.T) {
	ns := namespace(t)
	const (
		lease    = 4 * time.Second
		duration = 25 * time.Second
		name     = "shared-with-client-go"
	)
	e := startElector(t, ns, "elector-0", lease)

	cfg, err := json.Marshal(candidateConfig{
		Kubeconfig: cp.electorKubeconfig, Namespace: ns, Name: name, Identity: "client-go-candidate",
		LeaseDuration: lease, RenewDeadline: 2 * time.Second, Retry: 500 * time.Millisecond,
		HoldMin: time.Second, HoldMax: 2 * time.Second, PauseMin: 500 * time.Millisecond, PauseMax: 1500 * time.Millisecond,
	})
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), candidateEnv+"="+string(cfg))
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	var (
		mu        sync.Mutex
		intervals []*interval
		open      *interval
	)
	record := func(iv *interval) {
		mu.Lock()
		intervals = append(intervals, iv)
		mu.Unlock()
	}
	read := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			what, ts, ok := strings.Cut(sc.Text(), " ")
			n, err := strconv.ParseInt(ts, 10, 64)
			if !ok || err != nil {
				continue // not ours (test framework output)
			}
			at := time.Unix(0, n)
			mu.Lock()
			switch {
			case what == "start" && open == nil:
				open = &interval{who: "client-go", start: at}
				intervals = append(intervals, open)
			case what == "stop" && open != nil:
				open.end = at
				open = nil
			default:
				t.Errorf("candidate said %q out of turn", sc.Text())
			}
			mu.Unlock()
		}
		read <- sc.Err()
	}()
	stopCandidate := func() {
		stdin.Close()
		waited := make(chan error, 1)
		go func() {
			<-read
			waited <- cmd.Wait()
		}()
		select {
		case err := <-waited:
			if err != nil {
				t.Errorf("candidate: %v\n%s", err, stderr.String())
			}
		case <-time.After(waitFor):
			_ = cmd.Process.Kill()
			<-waited
			t.Errorf("candidate still running %v after its stdin closed\n%s", waitFor, stderr.String())
		}
	}

	tr := newTransport(t, e.Addr)
	begin := time.Now()
	for term := 0; time.Since(begin) < duration; term++ {
		el, err := mpsync.NewElection(name, mpsync.WithTransport(tr), mpsync.WithIdentity(fmt.Sprintf("mpsync-%d", term)))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(bg())
		errc := make(chan error, 1)
		go func() { errc <- el.Run(ctx) }()
		timeout := time.After(waitFor)
	events:
		for {
			select {
			case ev := <-el.Events():
				if ev.Role != mpsync.Leader {
					continue
				}
				iv := &interval{who: "mpsync", start: time.Now()}
				var once sync.Once
				stop := context.AfterFunc(ev.Context, func() {
					once.Do(func() {
						mu.Lock()
						iv.end = time.Now()
						mu.Unlock()
					})
				})
				record(iv)
				hold := time.NewTimer(between(time.Second, 2*time.Second))
				select {
				case <-hold.C:
				case <-ev.Context.Done():
					t.Errorf("mpsync term %d lost its lease: %v", term, context.Cause(ev.Context))
				}
				hold.Stop()
				cancel() // Run ends the term before it releases the Lease
				if err := <-errc; !errors.Is(err, context.Canceled) {
					t.Errorf("Run = %v", err)
				}
				stop()
				if ev.Context.Err() == nil {
					t.Errorf("term %d: leadership context live after Run returned", term)
				}
				once.Do(func() {
					mu.Lock()
					iv.end = time.Now()
					mu.Unlock()
				})
				break events
			case <-timeout:
				cancel()
				<-errc
				stopCandidate()
				t.Fatalf("mpsync term %d: not leader within %v", term, waitFor)
			}
		}
		pause := time.NewTimer(between(500*time.Millisecond, 1500*time.Millisecond))
		<-pause.C
	}
	stopCandidate()

	mu.Lock()
	defer mu.Unlock()
	slices.SortFunc(intervals, func(a, b *interval) int { return a.start.Compare(b.start) })
	count := map[string]int{}
	for i, iv := range intervals {
		count[iv.who]++
		if iv.end.IsZero() {
			t.Errorf("%s's term from %v never ended", iv.who, iv.start.Format(time.StampMicro))
			continue
		}
		if i > 0 {
			prev := intervals[i-1]
			if !prev.end.IsZero() && iv.start.Before(prev.end) {
				t.Errorf("two leaders: %s led %v..%v and %s from %v",
					prev.who, prev.start.Format(time.StampMicro), prev.end.Format(time.StampMicro),
					iv.who, iv.start.Format(time.StampMicro))
			}
		}
	}
	var gaps []time.Duration
	for i := 1; i < len(intervals); i++ {
		if intervals[i].who != intervals[i-1].who && !intervals[i-1].end.IsZero() {
			gaps = append(gaps, intervals[i].start.Sub(intervals[i-1].end))
		}
	}
	t.Logf("%d terms in %v: %d client-go, %d mpsync; %d handovers between them", len(intervals), duration, count["client-go"], count["mpsync"], len(gaps))
	if count["client-go"] < 2 || count["mpsync"] < 2 {
		t.Errorf("want each side to lead at least twice for the test to mean something; got %v\ncandidate stderr:\n%s", count, stderr.String())
	}
}
