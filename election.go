package mpsync

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mpsync/mpsync/internal/trace"
)

// Role says whether an Event makes this candidate the leader or a follower.
type Role int

const (
	// Follower: another candidate leads, or nobody does yet.
	Follower Role = iota + 1
	// Leader: this candidate leads, for the term in Event.Context.
	Leader
)

// String returns "follower" or "leader".
func (r Role) String() string {
	switch r {
	case Follower:
		return "follower"
	case Leader:
		return "leader"
	}
	return "Role(?)"
}

// An Event reports a change in an election, as seen by one candidate.
type Event struct {
	// Role is Leader when this candidate has just become leader, and
	// Follower when it is not leader: at the start, after a term ends
	// (lost, or given up by Resign), and whenever the leader it follows
	// changes.
	Role Role
	// Leader is the identity of the current leader: this candidate's own
	// for Leader events, and empty if nobody leads.
	Leader string
	// Token is the fencing token of the leader's term (0 if nobody has
	// led yet).
	Token uint64
	// Context is the term's leadership context for Leader events (nil for
	// Follower events). It ends when the term ends, possibly before the
	// event is read; work done as leader runs under it.
	Context context.Context
}

// An Election campaigns for leadership among candidates that share a name.
// Create it with NewElection, then read Events while Run campaigns; its
// leader hands over with Resign. To follow who leads without campaigning,
// use an Observer. The zero value is not usable; methods are safe for
// concurrent use.
type Election struct {
	name    string
	cfg     *config
	lock    *Lock // the campaign's
	events  chan Event
	started atomic.Bool
	stopped chan struct{} // closed when Run returns

	mu      sync.Mutex
	seen    Holder        // the latest holder the watch reported
	changed chan struct{} // closed, and replaced, when seen changes
	aside   chan struct{} // while a Resign stands aside; closed when it ends
}

// NewElection returns an Election for the lock name, which must be a
// DNS-1123 subdomain (ErrInvalidName otherwise). It does not contact the
// elector.
func NewElection(name string, opts ...Option) (*Election, error) {
	cfg, err := newConfig(name, opts)
	if err != nil {
		return nil, err
	}
	return &Election{
		name:    name,
		cfg:     cfg,
		lock:    &Lock{name: name, cfg: cfg},
		events:  make(chan Event),
		stopped: make(chan struct{}),
		changed: make(chan struct{}),
	}, nil
}

// Name is the election's name.
func (e *Election) Name() string { return e.name }

// Identity is this candidate's identity, as Event.Leader shows it.
func (e *Election) Identity() string { return e.cfg.identity }

// Events returns the channel of this candidate's events, which Run closes
// when it returns. Events come in order. A slow reader never slows the
// campaign or renewal: events wait in an unbounded queue, except that a
// Follower event not yet read is replaced by a newer Follower event, so a
// reader that falls behind learns the latest leader. Leader events are
// never dropped, but their Context may be done by the time they are read.
// Events still queued when Run's context ends are dropped.
func (e *Election) Events() <-chan Event { return e.events }

// Run campaigns until ctx ends: it takes the lock when it can, emits a
// Leader event for each term and a Follower event when the term ends, then
// campaigns again (after a Resign, once another candidate has led);
// meanwhile it watches who leads, without polling, and emits a Follower
// event when that changes. It retries through elector
// failures, logging them. When ctx ends, Run releases the lock if held,
// waits for everything it started, closes Events and returns ctx.Err().
// Run may be called once; later calls return ErrRunning.
func (e *Election) Run(ctx context.Context) error {
	if !e.started.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer close(e.stopped)
	defer close(e.events)
	inner, cancel := context.WithCancel(ctx)
	defer cancel()

	in := make(chan input)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); e.campaign(inner, in) }()
	go func() {
		defer wg.Done()
		follow(inner, e.cfg, e.name, func(h Holder) {
			e.observe(h)
			send(inner, in, input{kind: observed, holder: h})
		})
	}()
	e.deliver(inner, in)
	cancel()
	wg.Wait()
	return ctx.Err()
}

// input is what the campaign and watch goroutines tell the deliverer.
type input struct {
	kind   int // elected, deposed or observed
	token  uint64
	ctx    context.Context
	holder Holder
}

const (
	elected = iota
	deposed
	observed
)

func send(ctx context.Context, in chan<- input, msg input) {
	select {
	case in <- msg:
	case <-ctx.Done():
	}
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// campaign holds the lock whenever it can until ctx ends.
func (e *Election) campaign(ctx context.Context, in chan<- input) {
	lk := e.lock
	backoff := minBackoff
	for ctx.Err() == nil {
		held, err := lk.Lock(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			e.cfg.logger.Warn("campaign failed; retrying", zap.Error(err), zap.Duration("retry", backoff))
			pause(ctx, backoff)
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		tok, _ := FencingToken(held)
		send(ctx, in, input{kind: elected, token: tok, ctx: held})
		<-held.Done()
		lk.Unlock() // waits for the release; a no-op after a loss
		if ctx.Err() != nil {
			return
		}
		e.cfg.logger.Info("leadership ended", zap.Error(context.Cause(held)))
		send(ctx, in, input{kind: deposed, token: tok})
		e.mu.Lock()
		aside := e.aside
		e.mu.Unlock()
		if aside != nil {
			select { // Resign: campaign again once someone else leads
			case <-aside:
			case <-ctx.Done():
				return
			}
		}
	}
}

// Resign hands leadership over without leaving the election: it ends the
// current term (the leadership context ends with cause ErrResigned), which
// releases the lock, and a Follower event follows. This candidate then
// stands aside: it does not campaign again until another candidate has
// taken the lock, or until ctx ends, so that a waiting candidate gets the
// lock rather than this one taking it straight back. Resign returns when
// the stand-aside ends: nil once another candidate leads (or if Run ended
// meanwhile), ctx.Err() if ctx ended first, with this candidate
// campaigning again (with no other candidate, it will lead again). Bound
// ctx by how long the election may go without a leader.
//
// Resign returns ErrNotHeld, and changes nothing, if this candidate does
// not lead (Run not started or over, between terms, a term lost) or if
// another Resign is under way. The release is bounded by ctx and by 5
// seconds; if it fails, Resign returns its error and the candidate
// campaigns again at once (the lease ends at the elector in any case).
func (e *Election) Resign(ctx context.Context) error {
	e.mu.Lock()
	if e.aside != nil {
		e.mu.Unlock()
		return ErrNotHeld
	}
	aside := make(chan struct{})
	e.aside = aside
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.aside = nil
		e.mu.Unlock()
		close(aside)
	}()

	e.lock.mu.Lock()
	t := e.lock.term
	e.lock.mu.Unlock()
	if t == nil || t.ctx.Err() != nil {
		return ErrNotHeld
	}
	rctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	live, err := e.lock.end(rctx, ErrResigned)
	cancel()
	switch {
	case !live:
		return ErrNotHeld
	case err != nil:
		return err
	}
	for {
		e.mu.Lock()
		h, changed := e.seen, e.changed
		e.mu.Unlock()
		if h.Identity != "" && h.Identity != e.cfg.identity && h.Token > t.ctx.token {
			return nil
		}
		select {
		case <-changed:
		case <-e.stopped:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// observe records h as the latest holder the watch reported.
func (e *Election) observe(h Holder) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if h != e.seen {
		e.seen = h
		close(e.changed)
		e.changed = make(chan struct{})
	}
}

const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// follow calls fn with each state of the lock name that cfg's transport's
// watch reports, until ctx ends, opening the watch again (after a backoff)
// whenever it fails.
func follow(ctx context.Context, cfg *config, name string, fn func(Holder)) {
	backoff := minBackoff
	for ctx.Err() == nil {
		err := cfg.transport.Watch(ctx, name, func(h Holder) {
			backoff = minBackoff
			fn(h)
		})
		if ctx.Err() != nil {
			return
		}
		cfg.logger.Warn("watch failed; retrying", zap.Error(err), zap.Duration("retry", backoff))
		pause(ctx, backoff)
		backoff = min(2*backoff, maxBackoff)
	}
}

// deliver turns inputs into events and sends them in order until ctx ends.
func (e *Election) deliver(ctx context.Context, in <-chan input) {
	var (
		queue     []Event
		leading   bool
		term      uint64 // token of this candidate's latest term
		seen      Holder // latest holder the watch reported
		announced bool   // a Follower event has named lastLeader
		last      string
	)
	follow := func(leader string, token uint64) {
		if announced && leader == last {
			return
		}
		announced, last = true, leader
		ev := Event{Role: Follower, Leader: leader, Token: token}
		if n := len(queue); n > 0 && queue[n-1].Role == Follower {
			queue[n-1] = ev
			return
		}
		queue = append(queue, ev)
	}
	for {
		var out chan<- Event
		var next Event
		if len(queue) > 0 {
			out, next = e.events, queue[0]
		}
		select {
		case <-ctx.Done():
			return
		case out <- next:
			queue = queue[1:]
			if next.Role == Leader {
				trace.Mark(trace.EventSent)
			}
		case msg := <-in:
			switch msg.kind {
			case elected:
				leading, term, announced = true, msg.token, false
				queue = append(queue, Event{Role: Leader, Leader: e.cfg.identity, Token: msg.token, Context: msg.ctx})
			case deposed:
				leading, announced = false, false
				if seen.Token > term && seen.Identity != e.cfg.identity {
					follow(seen.Identity, seen.Token)
				} else {
					follow("", term)
				}
			case observed:
				seen = msg.holder
				// While leading, or when the watch shows this
				// candidate (a term starting or ending), the campaign
				// is the authority.
				if leading || seen.Identity == e.cfg.identity || (seen.Token < term) {
					continue
				}
				follow(seen.Identity, seen.Token)
			}
		}
	}
}
