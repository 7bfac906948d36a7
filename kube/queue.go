package kube

import (
	"context"
	"encoding/json"
	"slices"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The queue of waiting electors, kept in the Lease (see the package doc,
// "Taking turns across electors"). Only mpsync electors write these
// annotations; client-go and electors of older versions keep them as they
// are (they update the object they read) and ignore them.
const (
	// QueueAnnotation holds the electors waiting for the Lease, first come
	// first, as a JSON array of members ("<elector identity>#<instance>",
	// Backend.member). An elector with a waiter for a Lease held or
	// reserved by someone else adds itself once and stays while it has
	// waiters.
	QueueAnnotation = "mpsync.github.io/queue"
	// SuccessorAnnotation names, on a released Lease, the member whose
	// turn it is: the releaser popped it from the head of the queue in the
	// write that cleared spec.holderIdentity. Other mpsync electors leave
	// the free Lease to it for the Lease's duration of their own time.
	SuccessorAnnotation = "mpsync.github.io/next"
)

// member is this Backend's entry in a Lease's queue: its identity and its
// random instance, so that a restarted elector or two Backends of one
// identity are never taken for each other.
func (b *Backend) member() string { return b.identity + "#" + b.instance }

// queueOf is the queue of obj; nil if it has none or it is malformed (the
// next write of an elector puts a well-formed one in its place).
func queueOf(obj *coordinationv1.Lease) []string {
	s, ok := obj.GetAnnotations()[QueueAnnotation]
	if !ok {
		return nil
	}
	var q []string
	if json.Unmarshal([]byte(s), &q) != nil {
		return nil
	}
	return q
}

// successorOf is the member obj names as its successor, "" if none.
func successorOf(obj *coordinationv1.Lease) string {
	if obj == nil {
		return ""
	}
	return obj.GetAnnotations()[SuccessorAnnotation]
}

// setTurns writes queue q and successor next into obj (a copy about to be
// written), removing the annotations that would be empty.
func setTurns(obj *coordinationv1.Lease, q []string, next string) {
	ann := obj.GetAnnotations()
	if ann == nil {
		ann = make(map[string]string)
	}
	delete(ann, QueueAnnotation)
	delete(ann, SuccessorAnnotation)
	if len(q) > 0 {
		s, _ := json.Marshal(q) // a []string always marshals
		ann[QueueAnnotation] = string(s)
	}
	if next != "" {
		ann[SuccessorAnnotation] = next
	}
	if len(ann) == 0 {
		ann = nil
	}
	obj.SetAnnotations(ann)
}

// without is q with every entry m removed, in a new slice.
func without(q []string, m string) []string {
	out := make([]string, 0, len(q))
	for _, x := range q {
		if x != m {
			out = append(out, x)
		}
	}
	return out
}

// handOff is the turn order after member me gives up the Lease (a release,
// or a successor with no waiter passing its turn on): the head of the queue
// other than me becomes the successor; if stay (me still has waiters), me
// goes to the tail, or is the successor itself when nobody else waits.
func handOff(q []string, me string, stay bool) (next string, rest []string) {
	rest = without(q, me)
	if len(rest) > 0 {
		next, rest = rest[0], rest[1:]
	}
	if stay {
		if next == "" {
			next = me
		} else {
			rest = append(rest, me)
		}
	}
	return next, rest
}

// taken is the queue after member me takes the Lease: me leaves it, and
// goes back to the tail if stay (it has more waiters); no successor.
func taken(q []string, me string, stay bool) []string {
	rest := without(q, me)
	if stay {
		rest = append(rest, me)
	}
	return rest
}

// queuedLocked reports whether this Backend is in the queue of the Lease
// as last seen, or is its named successor.
func (b *Backend) queuedLocked(st *lease) bool {
	me := b.member()
	return successorOf(st.obj) == me || slices.Contains(queueOf(st.obj), me)
}

// waitingLocked reports whether this Backend has Acquire calls waiting for
// the Lease that are to be served: none once Close has begun.
func (b *Backend) waitingLocked(st *lease) bool {
	return !b.closed && len(st.queue) > 0
}

// join adds this Backend to the tail of the Lease's queue: an Update of
// base conditioned on its resourceVersion. Joining changes nothing of the
// holder's term (sameTerm), so nobody, the joiner included, counts the
// holder's lease afresh from it.
func (a *attempt) join(ctx context.Context, base *coordinationv1.Lease) error {
	b, st := a.b, a.st
	obj := base.DeepCopy()
	setTurns(obj, append(without(queueOf(base), b.member()), b.member()), successorOf(base))
	rctx, cancel := context.WithTimeout(ctx, requestTimeout(a.d))
	res, err := b.client.Update(rctx, obj, metav1.UpdateOptions{})
	cancel()
	b.mu.Lock()
	defer b.mu.Unlock()
	st.joining = false
	st.broadcast()
	if err != nil {
		return err
	}
	b.observeLocked(st, res, false)
	b.log.Debug("joined the queue", zap.String("name", a.req.Name), zap.Strings("queue", queueOf(res)))
	return nil
}

// withdrawLocked takes this Backend out of the Lease's turns once it has
// no waiter left for it (they left, or Close failed them): a named
// successor of a free Lease passes its turn on to the next in the queue
// (or leaves the Lease plainly free), and an entry in the queue is
// removed, in one conditional write run in the background. It tries once
// per version seen: a conflict is followed by the watch's newer version,
// which calls it again, and a failed request is tried again after a
// backoff.
func (b *Backend) withdrawLocked(st *lease) {
	if st.obj == nil || b.waitingLocked(st) || st.grant != nil || st.pending != "" || st.releasing != "" ||
		st.joining || st.withdrawing || b.orphansEnd || st.withdrawRV == st.obj.ResourceVersion {
		return
	}
	me := b.member()
	free := holderOf(st.obj) == ""
	named := free && successorOf(st.obj) == me
	if !named && !slices.Contains(queueOf(st.obj), me) {
		return
	}
	base := st.obj
	obj := base.DeepCopy()
	if named {
		next, rest := handOff(queueOf(base), me, false)
		setTurns(obj, rest, next)
	} else {
		setTurns(obj, without(queueOf(base), me), successorOf(base))
	}
	st.withdrawing, st.withdrawRV = true, base.ResourceVersion
	b.orphans.Add(1)
	go func() {
		defer b.orphans.Done()
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout(b.duration(base)))
		res, err := b.client.Update(ctx, obj, metav1.UpdateOptions{})
		cancel()
		b.mu.Lock()
		defer b.mu.Unlock()
		st.withdrawing = false
		switch {
		case err == nil:
			st.withdrawBackoff = 0
			b.observeLocked(st, res, false)
		case !apierrors.IsConflict(err):
			// Not a newer version (which the watch brings, and with it
			// another try) but a failed request: try this one again.
			st.withdrawBackoff = min(max(2*st.withdrawBackoff, minBackoff), maxBackoff)
			b.log.Warn("could not leave the queue of a lease; retrying (meanwhile others wait out this elector's turn)",
				zap.String("name", st.name), zap.Duration("in", st.withdrawBackoff), zap.Error(err))
			b.clock.AfterFunc(st.withdrawBackoff, func() {
				b.mu.Lock()
				defer b.mu.Unlock()
				if st.withdrawRV == base.ResourceVersion {
					st.withdrawRV = ""
					b.withdrawLocked(st)
				}
			})
		}
		b.log.Debug("left the queue", zap.String("name", st.name), zap.Bool("passedOn", named), zap.Error(err))
		st.broadcast()
		b.withdrawLocked(st) // the version seen meanwhile may need it again
	}()
}
