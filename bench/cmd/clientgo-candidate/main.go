// Command clientgo-candidate is the baseline of mpsync's benchmarks: a
// leader-election candidate written with client-go's leaderelection
// package as a library (a LeaseLock, ReleaseOnCancel), as a Kubernetes
// controller would use it. It campaigns for one Lease until SIGTERM or
// SIGINT, then releases it if it leads, and exits.
//
// Usage:
//
//	clientgo-candidate -kubeconfig FILE -namespace NS -name LEASE -identity ID
//	    [-lease-duration 15s] [-renew-deadline 10s] [-retry-period 2s]
//
// On stdout it prints one line per event in the format of package
// bench/internal/measure ("benchline mono_ns=... event=leading id=..."),
// stamped with CLOCK_MONOTONIC: started, following (leader=...), leading,
// stopped-leading, exiting. client-go's own logs go to stderr.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/mpsync/mpsync/bench/internal/measure"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig `file` (required)")
	namespace := flag.String("namespace", "default", "`namespace` of the Lease")
	name := flag.String("name", "bench", "`name` of the Lease")
	identity := flag.String("identity", "", "this candidate's `identity` (required)")
	leaseDuration := flag.Duration("lease-duration", 15*time.Second, "LeaseDuration")
	renewDeadline := flag.Duration("renew-deadline", 10*time.Second, "RenewDeadline")
	retryPeriod := flag.Duration("retry-period", 2*time.Second, "RetryPeriod")
	flag.Parse()
	if flag.NArg() > 0 || *kubeconfig == "" || *identity == "" {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := run(ctx, *kubeconfig, *namespace, *name, *identity, *leaseDuration, *renewDeadline, *retryPeriod)
	if err != nil {
		_ = measure.Emit(os.Stdout, measure.EventExiting, *identity, "err", err.Error())
		fmt.Fprintln(os.Stderr, "clientgo-candidate:", err)
		stop()
		os.Exit(1)
	}
	_ = measure.Emit(os.Stdout, measure.EventExiting, *identity)
}

func run(ctx context.Context, kubeconfig, namespace, name, id string, lease, renew, retry time.Duration) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name},
		Client:     cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   lease,
		RenewDeadline:   renew,
		RetryPeriod:     retry,
		ReleaseOnCancel: true,
		Name:            name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) {
				_ = measure.Emit(os.Stdout, measure.EventLeading, id)
			},
			OnStoppedLeading: func() {
				_ = measure.Emit(os.Stdout, measure.EventStopped, id)
			},
			OnNewLeader: func(leader string) {
				if leader != id {
					_ = measure.Emit(os.Stdout, measure.EventFollowing, id, "leader", leader)
				}
			},
		},
	})
	if err != nil {
		return err
	}
	_ = measure.Emit(os.Stdout, measure.EventStarted, id)
	// Run returns once ctx is done and, when leading, the Lease has been
	// released (ReleaseOnCancel).
	le.Run(ctx)
	return nil
}
