package transport

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/mpsync/mpsync/internal/wire"
)

// Silence is how long a stream may go without a line, once the elector has
// shown that it sends heartbeats, before the client takes the elector for
// gone (hung, stopped, or cut off without a reset) and ends the stream:
// several HeartbeatIntervals, so that a slow moment does not count. A held
// lease then ends with an error wrapping core.ErrLockLost and
// core.ErrUnavailable, as when the stream breaks; a waiting acquire fails
// with core.ErrUnavailable. The leadership context's local deadline holds
// in any case; this only makes the end come sooner.
const Silence = 4 * wire.HeartbeatInterval

// silence ends a stream that has gone quiet for Silence. It is armed by the
// first waiting or heartbeat line, so that an elector from before
// heartbeats, whose held streams are quiet, is not taken for gone. heard is
// called by the stream's one reader; explain may be called after.
type silence struct {
	timer  *time.Timer
	armed  bool
	fired  atomic.Bool
	counts *atomic.Int64 // the Client's count of armed silences
}

// newSilence returns a silence that calls cancel (which must end the
// stream's request) when it fires, and counts itself in counts while armed.
func newSilence(cancel context.CancelFunc, counts *atomic.Int64) *silence {
	q := &silence{counts: counts}
	q.timer = time.AfterFunc(Silence, func() {
		q.fired.Store(true)
		cancel()
	})
	q.timer.Stop()
	return q
}

// heard records that the stream sent ev: the silence starts again.
func (q *silence) heard(ev wire.Event) {
	if !q.armed && (ev.Type == wire.EventWaiting || ev.Type == wire.EventHeartbeat) {
		q.armed = true
		q.counts.Add(1)
	}
	if q.armed {
		q.timer.Reset(Silence)
	}
}

// stop disarms the silence for good. It is called by the stream's reader,
// once.
func (q *silence) stop() {
	q.timer.Stop()
	if q.armed {
		q.counts.Add(-1)
	}
}

// explain returns the error of a read that failed: err, or if the silence
// ended the stream, an error saying so.
func (q *silence) explain(err error) error {
	if q.fired.Load() {
		return fmt.Errorf("no line for %v (the elector sends a heartbeat every %v): the elector is taken for gone: %w", Silence, wire.HeartbeatInterval, err)
	}
	return err
}
