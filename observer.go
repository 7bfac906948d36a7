package mpsync

import (
	"context"
	"sync"
	"sync/atomic"
)

// An Observer follows who holds a lock, that is who leads the election of
// that name, without standing for election: for a replica that forwards
// writes to its leader, or a dashboard. Create it with NewObserver, then
// read Events while Run follows. The zero value is not usable; methods are
// safe for concurrent use. An Observer only watches: it never takes the
// lock, and it needs no identity (WithIdentity is accepted and ignored).
type Observer struct {
	name    string
	cfg     *config
	events  chan Holder
	started atomic.Bool

	mu     sync.Mutex
	leader Holder
	known  bool
}

// NewObserver returns an Observer of the lock name, which must be a
// DNS-1123 subdomain (ErrInvalidName otherwise). It takes the same options
// as NewElection and does not contact the elector.
func NewObserver(name string, opts ...Option) (*Observer, error) {
	// An Observer holds nothing, so it needs no identity: this one only
	// names it in logs, and spares newConfig a host name that would not
	// do as one.
	opts = append([]Option{WithIdentity("observer")}, opts...)
	cfg, err := newConfig(name, opts)
	if err != nil {
		return nil, err
	}
	return &Observer{name: name, cfg: cfg, events: make(chan Holder)}, nil
}

// Name is the observed lock's name.
func (o *Observer) Name() string { return o.name }

// Events returns the channel on which Run reports each change of holder:
// first the state when Run starts, then a Holder whenever the identity or
// the token differs from the last one sent (Identity empty: nobody leads;
// see Holder for the Token then). Run closes it when it returns.
//
// The slow-reader rule is the Election's: a slow reader never slows the
// watch, and an event not yet read is replaced by a newer one, so a reader
// that falls behind learns the latest holder and may miss the ones in
// between; the tokens it sees only grow, but for a free lock reported with
// the last holder's token. The event still unread when Run's context ends
// is dropped.
func (o *Observer) Events() <-chan Holder { return o.events }

// Leader returns the latest holder Run has seen, and false before its
// first report. While the watch is broken (the elector unreachable) it
// keeps returning the last holder seen, which may be stale: the Events
// channel tells of changes only once the watch is back.
func (o *Observer) Leader() (Holder, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.leader, o.known
}

// Run follows the lock's holder until ctx ends, without polling, through
// the transport's Watch, which it opens again after a failure (logging it,
// with a backoff up to 2 seconds). When ctx ends, Run waits for what it
// started, closes Events and returns ctx.Err(). Run may be called once;
// later calls return ErrRunning.
func (o *Observer) Run(ctx context.Context) error {
	if !o.started.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer close(o.events)
	in := make(chan Holder)
	done := make(chan struct{})
	go func() {
		defer close(done)
		follow(ctx, o.cfg, o.name, func(h Holder) {
			o.mu.Lock()
			o.leader, o.known = h, true
			o.mu.Unlock()
			select {
			case in <- h:
			case <-ctx.Done():
			}
		})
	}()
	o.deliver(ctx, in)
	<-done
	return ctx.Err()
}

// deliver sends the changes of holder that come on in, keeping at most
// the latest unsent one, until ctx ends.
func (o *Observer) deliver(ctx context.Context, in <-chan Holder) {
	var (
		sent, pending       Holder
		hasSent, hasPending bool
	)
	for {
		var out chan<- Holder
		if hasPending {
			out = o.events
		}
		select {
		case <-ctx.Done():
			return
		case out <- pending:
			sent, hasSent, hasPending = pending, true, false
		case h := <-in:
			// A change back to what the reader already has cancels the
			// pending one.
			hasPending = !hasSent || h != sent
			pending = h
		}
	}
}
