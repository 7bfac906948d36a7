package transport_test

import (
	"testing"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/drivertest"
	"github.com/mpsync/mpsync/internal/transport"
)

// The conformance suite over the HTTP transport, against a real elector
// process on the memory backend.
func TestConformance(t *testing.T) {
	addr, post := transport.StartElector(t, "--backend", "memory", "--debug-endpoints", "--lease-duration", "5s")
	drivertest.RunConformanceTests(t, harness{addr, post})
}

type harness struct {
	addr string
	post func(string)
}

func (h harness) Transport(t *testing.T) mpsync.Transport {
	tr, err := mpsync.NewHTTPTransport(h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

func (h harness) Revoke(t *testing.T, name string) { h.post("/debug/revoke/" + name) }
