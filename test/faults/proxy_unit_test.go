package faults

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// echoServer echoes every line back until closed.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// roundTrip sends a line through c and returns how long its echo took.
func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != "ping\n" {
		t.Fatalf("echo = %q, want ping", line)
	}
	return time.Since(start), nil
}

func TestProxy(t *testing.T) {
	p, err := newProxy(echoServer(t))
	require.NoError(t, err)
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := roundTrip(t, c, r); err != nil {
		t.Fatalf("passing: %v", err)
	}

	const d = 100 * time.Millisecond
	p.Delay(d)
	if took, err := roundTrip(t, c, r); err != nil || took < 2*d {
		t.Errorf("delayed by %v each way: round trip took %v, %v; want at least %v", d, took, err, 2*d)
	}

	// A blackhole holds the bytes: nothing comes back until the heal,
	// then everything does.
	p.Blackhole()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := r.ReadString('\n'); !isTimeout(err) {
		t.Errorf("read through a blackhole: %v, want a timeout", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	p.Heal(false)
	if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
		t.Errorf("after the heal: %q, %v; want the held ping", line, err)
	}

	// A heal with reset closes the connections.
	p.Blackhole()
	p.Heal(true)
	if _, err := roundTrip(t, c, r); err == nil {
		t.Error("round trip on a connection reset by the heal succeeded")
	}
	c2, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c2.Close()
	if _, err := roundTrip(t, c2, bufio.NewReader(c2)); err != nil {
		t.Errorf("new connection after the heal: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
