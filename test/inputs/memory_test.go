package inputs

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/mpsync/mpsync/internal/electorproc"
	"github.com/mpsync/mpsync/internal/wire"
)

// heap is what the elector's /metrics says of its heap.
type heap struct {
	nextGC  float64 // go_memstats_next_gc_bytes: set by the last GC from the heap it found live
	inuse   float64 // go_memstats_heap_inuse_bytes
	objects float64 // go_memstats_heap_objects
}

func metricFloat(t *testing.T, p *electorproc.Process, series string) float64 {
	t.Helper()
	v, err := p.Metric(series)
	require.NoError(t, err)
	f, err := strconv.ParseFloat(v, 64)
	require.NoError(t, err, "%s = %q", series, v)
	return f
}

// heapAfterGC scrapes /metrics, which allocates a little each time, until
// the elector's own GC has run twice since the call began (nothing forces
// it), and returns the heap as the last GC left it.
func heapAfterGC(t *testing.T, p *electorproc.Process) heap {
	t.Helper()
	start := metricFloat(t, p, "go_gc_duration_seconds_count")
	deadline := time.Now().Add(2 * time.Minute)
	for metricFloat(t, p, "go_gc_duration_seconds_count") < start+2 {
		require.True(t, time.Now().Before(deadline), "the elector ran no GC in 2 minutes of /metrics scrapes")
	}
	return heap{
		nextGC:  metricFloat(t, p, "go_memstats_next_gc_bytes"),
		inuse:   metricFloat(t, p, "go_memstats_heap_inuse_bytes"),
		objects: metricFloat(t, p, "go_memstats_heap_objects"),
	}
}

// useName does to name what a client might: GET its state, open a watch
// and close it after the first line, acquire it and release it.
func useName(ctx context.Context, hc *http.Client, base, name string) error {
	if err := expect(ctx, hc, "GET", base+"/v1/locks/"+name, "", func(r *bufio.Reader) error { return nil }); err != nil {
		return err
	}
	firstLine := func(r *bufio.Reader) error { _, err := r.ReadBytes('\n'); return err }
	if err := expect(ctx, hc, "GET", base+"/v1/locks/"+name+"/watch", "", firstLine); err != nil {
		return err
	}
	hold := func(r *bufio.Reader) error {
		ev, err := nextOf(r, wire.EventAcquired)
		if err != nil {
			return err
		}
		if err := expect(ctx, hc, "POST", base+"/v1/locks/"+name+"/release", `{"session":"`+ev.Session+`"}`, func(*bufio.Reader) error { return nil }); err != nil {
			return err
		}
		_, err = nextOf(r, wire.EventReleased)
		return err
	}
	return expect(ctx, hc, "POST", base+"/v1/locks/"+name+"/acquire", `{"identity":"flood"}`, hold)
}

// nextOf reads stream lines up to the first of type want, skipping the
// lines of other types that readers must ignore (heartbeats, waiting), and
// failing on a loss or an error line.
func nextOf(r *bufio.Reader, want string) (wire.Event, error) {
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return wire.Event{}, fmt.Errorf("stream ended before a %s line: %w", want, err)
		}
		var ev wire.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return wire.Event{}, fmt.Errorf("stream line %q: %w", line, err)
		}
		switch ev.Type {
		case want:
			return ev, nil
		case wire.EventLost, wire.EventError:
			return wire.Event{}, fmt.Errorf("stream line %q, want %s", line, want)
		}
	}
}

// expect sends a request, wants 200, hands the body to read, then closes
// it (for a stream, closing the connection, as a client that leaves does).
func expect(ctx context.Context, hc *http.Client, method, url, body string, read func(*bufio.Reader) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s %s: %s %s", method, url, resp.Status, b)
	}
	if err := read(bufio.NewReader(resp.Body)); err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	if !strings.HasSuffix(url, "/watch") && !strings.HasSuffix(url, "/acquire") {
		_, _ = io.Copy(io.Discard, resp.Body) // keep the connection for reuse
	}
	return nil
}

// flood uses names prefix-0 .. prefix-(n-1) from a few concurrent clients.
func flood(t *testing.T, base, prefix string, n int) {
	t.Helper()
	const clients = 8
	g, ctx := errgroup.WithContext(context.Background())
	for c := range clients {
		g.Go(func() error {
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			defer hc.CloseIdleConnections()
			for i := c; i < n; i += clients {
				if err := useName(ctx, hc, base, fmt.Sprintf("%s-%d", prefix, i)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
}

// TestHeapReturnsAfterManyNames: 100,000 distinct names, each read (GET,
// a watch opened and closed) and held (acquire, release) through a real
// elector, leave its heap near where it started, while a healthy SDK
// holder keeps locking and unlocking next to them with no error.
func TestHeapReturnsAfterManyNames(t *testing.T) {
	const names = 100_000
	p := startElector(t)
	base := "http://" + p.Addr
	healthy := startHealthyHolder(t, p.Addr, "steady", 200*time.Millisecond)
	healthy.nextTerm(t)

	flood(t, base, "warm", 2_000) // pools, buffers and connections reach their working size
	before := heapAfterGC(t, p)
	start := time.Now()
	flood(t, base, "name", names)
	took := time.Since(start)
	after := heapAfterGC(t, p)
	t.Logf("%d names in %v; after the GC: next_gc %.1f MB -> %.1f MB, heap_inuse %.1f MB -> %.1f MB, heap objects %.0f -> %.0f",
		names, took.Round(time.Second), before.nextGC/1e6, after.nextGC/1e6, before.inuse/1e6, after.inuse/1e6, before.objects, after.objects)

	// Remembering 100,000 names costs tens of MB (about 40 MB before the
	// elector forgot unused names); allow a few MB of noise.
	const slack = 8 << 20
	require.Less(t, after.nextGC, before.nextGC+slack, "the GC target grew by %.1f MB", (after.nextGC-before.nextGC)/1e6)
	require.Less(t, after.inuse, before.inuse+slack, "heap in use grew by %.1f MB", (after.inuse-before.inuse)/1e6)

	healthy.nextTerm(t)
	require.NoError(t, healthy.stop())
}
