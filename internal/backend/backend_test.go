package backend

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mpsync/mpsync/internal/core"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor bounds every wait for something that should happen promptly.
const waitFor = 10 * time.Second

// plain hides every method of a Grant but Grant's own: a grant of a
// backend that is no AfterDoner.
type plain struct{ Grant }

// TestAfterDone: f runs once the grant ends, whether the grant is an
// AfterDoner (the memory backend's) or not (the fallback, a goroutine on
// Done); stop before the end keeps it from running and leaves no goroutine
// behind (goleak); stop after it reports false.
func TestAfterDone(t *testing.T) {
	for _, tt := range []struct {
		name string
		wrap func(Grant) Grant
	}{
		{"AfterDoner", func(g Grant) Grant { return g }},
		{"fallback", func(g Grant) Grant { return plain{g} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMemory(15 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close(context.Background())
			acquire := func(name string) Grant {
				g, err := m.Acquire(context.Background(), core.Request{Name: name, Identity: "a"})
				if err != nil {
					t.Fatal(err)
				}
				return tt.wrap(g)
			}
			if _, ok := acquire("probe").(AfterDoner); ok != (tt.name == "AfterDoner") {
				t.Fatalf("the grant is an AfterDoner: %v", ok)
			}

			g := acquire("ends")
			ran := make(chan struct{})
			stop := AfterDone(g, func() { close(ran) })
			select {
			case <-ran:
				t.Fatal("f ran before the grant ended")
			default:
			}
			if err := g.Release(context.Background()); err != nil {
				t.Fatal(err)
			}
			select {
			case <-ran:
			case <-time.After(waitFor):
				t.Fatalf("f did not run within %v of the release", waitFor)
			}
			if stop() {
				t.Error("stop after f ran reported true")
			}

			g = acquire("stopped")
			stop = AfterDone(g, func() { t.Error("a stopped f ran") })
			if !stop() {
				t.Error("stop before the end reported false")
			}
			if stop() {
				t.Error("a second stop reported true")
			}
			if err := g.Release(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}
