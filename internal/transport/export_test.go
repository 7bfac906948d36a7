package transport

import "testing"

// StartElector starts a real elector process on the memory backend with
// args, for the external tests, and returns its address and a function
// that POSTs to one of its paths and checks for 200.
func StartElector(t *testing.T, args ...string) (addr string, post func(path string)) {
	e := startElector(t, args...)
	return e.Addr, e.post
}

// armedStreams is how many of c's streams have seen a heartbeat or waiting
// line, which arms their silence.
func (c *Client) armedStreams() int64 { return c.armed.Load() }
