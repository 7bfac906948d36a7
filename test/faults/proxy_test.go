package faults

import (
	"net"
	"sync"
	"time"
)

// proxy is a TCP proxy on 127.0.0.1 between one elector and the API
// server: the elector's kubeconfig points at it, and TLS still verifies end
// to end, since the proxy only moves bytes. It can cut the elector off
// (blackhole) or slow it down (delay) while the other electors, which have
// proxies of their own, keep talking to the API server.
//
// A blackhole holds every byte, in both directions and on new connections
// too, as a partition would while TCP retransmits. Healing either lets the
// held bytes through (the connections survived the partition) or resets
// every connection (they did not).
type proxy struct {
	ln       net.Listener
	upstream string

	mu      sync.Mutex
	mode    proxyMode
	delay   time.Duration
	changed chan struct{} // closed and replaced whenever mode or delay change
	conns   map[net.Conn]struct{}
	closed  bool

	wg sync.WaitGroup // the accept loop and every pump
}

type proxyMode int

const (
	pass proxyMode = iota
	blackhole
	delayed
)

// chunkQueue bounds the chunks read but not yet written per direction, so
// that a held direction pushes back on its sender through TCP.
const chunkQueue = 64

func newProxy(upstream string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, upstream: upstream, changed: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is where the proxy listens.
func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) setLocked(m proxyMode, d time.Duration) {
	p.mode, p.delay = m, d
	close(p.changed)
	p.changed = make(chan struct{})
}

// Blackhole holds all traffic until Heal.
func (p *proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setLocked(blackhole, 0)
}

// Delay holds every chunk of bytes for d after it was read, until Heal.
func (p *proxy) Delay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setLocked(delayed, d)
}

// Heal lets traffic through again, at once. With reset, every open
// connection is closed first, so nothing held is delivered.
func (p *proxy) Heal(reset bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if reset {
		for c := range p.conns {
			c.Close()
		}
	}
	p.setLocked(pass, 0)
}

func (p *proxy) state() (proxyMode, time.Duration, <-chan struct{}, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode, p.delay, p.changed, p.closed
}

// Close stops the proxy, closes every connection and waits for all its
// goroutines.
func (p *proxy) Close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}

// track registers c, or closes it and returns false if the proxy closed.
func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	c.Close()
}

func (p *proxy) accept() {
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(down) {
			continue
		}
		p.wg.Go(func() {
			defer p.untrack(down)
			up, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
			if err != nil {
				return // the API server is down: the client sees a reset
			}
			if !p.track(up) {
				return
			}
			defer p.untrack(up)
			var pumps sync.WaitGroup
			pumps.Go(func() { p.pump(up, down) })
			pumps.Go(func() { p.pump(down, up) })
			pumps.Wait()
		})
	}
}

type chunk struct {
	b  []byte
	at time.Time // when it was read
}

// pump copies src to dst as the proxy's mode allows, until either side
// fails; then it closes both, which ends the other direction's pump too.
func (p *proxy) pump(dst, src net.Conn) {
	q := make(chan chunk, chunkQueue)
	stop := make(chan struct{})
	var reader sync.WaitGroup
	reader.Go(func() {
		defer close(q)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				select {
				case q <- chunk{b[:n], time.Now()}:
				case <-stop:
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	defer reader.Wait()
	defer close(stop)
	defer src.Close() // unblocks the reader's Read
	defer dst.Close()
	for c := range q {
		if !p.hold(c) {
			return
		}
		if _, err := dst.Write(c.b); err != nil {
			return
		}
	}
}

// hold waits until c may be written; false if the proxy closed.
func (p *proxy) hold(c chunk) bool {
	for {
		mode, d, changed, closed := p.state()
		switch {
		case closed:
			return false
		case mode == pass:
			return true
		case mode == blackhole:
			<-changed
			continue
		}
		left := time.Until(c.at.Add(d))
		if left <= 0 {
			return true
		}
		t := time.NewTimer(left)
		select {
		case <-changed:
			t.Stop()
		case <-t.C:
			return true
		}
	}
}
