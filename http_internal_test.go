package mpsync

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSharedHTTPTransport: Locks, Elections and Observers that name one
// elector address, however spelled, share one HTTPTransport (and so one
// connection pool); another address gets another.
func TestSharedHTTPTransport(t *testing.T) {
	l, err := NewLock("a", WithElector("127.0.0.1:1"))
	require.NoError(t, err)
	e, err := NewElection("b", WithElector("http://127.0.0.1:1"))
	require.NoError(t, err)
	o, err := NewObserver("c", WithElector("http://127.0.0.1:1/"))
	require.NoError(t, err)
	other, err := NewLock("a", WithElector("127.0.0.1:2"))
	require.NoError(t, err)

	tr, ok := l.cfg.transport.(*HTTPTransport)
	require.True(t, ok, "WithElector gave a %T", l.cfg.transport)
	assert.Equal(t, "http://127.0.0.1:1", tr.Addr())
	assert.Same(t, tr, e.cfg.transport)
	assert.Same(t, tr, o.cfg.transport)
	assert.NotSame(t, tr, other.cfg.transport)

	t.Setenv("MPSYNC_ELECTOR", "127.0.0.1:1")
	d, err := NewLock("a")
	require.NoError(t, err)
	assert.Same(t, tr, d.cfg.transport, "the default address shares too")

	own, err := NewHTTPTransport("127.0.0.1:1")
	require.NoError(t, err)
	assert.NotSame(t, tr, own, "NewHTTPTransport makes a transport of its own")
	require.NoError(t, own.Close())
}
