package mpsync

import (
	"context"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/transport"
)

// httpTransport adapts the elector's HTTP client to Transport.
type httpTransport struct {
	c *transport.Client
}

// NewHTTPTransport returns the transport that WithElector uses: HTTP to the
// elector at addr ("http://host:port" or "host:port"), speaking the v1
// protocol of PROTOCOL.md. Locks and elections may share one. It does not
// contact the elector; errors from its methods wrap ErrUnavailable and name
// the address when the elector cannot be reached. The Transport also has a
// method CloseIdleConnections(), which closes the keep-alive connections
// that no exchange is using.
func NewHTTPTransport(addr string) (Transport, error) {
	c, err := transport.New(addr)
	if err != nil {
		return nil, err
	}
	return httpTransport{c}, nil
}

func (t httpTransport) Acquire(ctx context.Context, name, identity string, wait bool) (Lease, error) {
	l, err := t.c.Acquire(ctx, name, identity, wait)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// CloseIdleConnections closes the connections that no exchange is using.
func (t httpTransport) CloseIdleConnections() { t.c.CloseIdleConnections() }

func (t httpTransport) Watch(ctx context.Context, name string, fn func(Holder)) error {
	return t.c.Watch(ctx, name, func(h core.Holder) { fn(Holder(h)) })
}
