// Package campaign is the campaign loop that mpsync's benchmark candidates
// share, whatever transport their Election uses: it runs the Election and
// prints its events as benchmark lines (package bench/internal/measure).
package campaign

import (
	"context"
	"errors"
	"io"
	"strconv"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/bench/internal/measure"
	"github.com/mpsync/mpsync/internal/trace"
)

// Run prints started for id to w, runs el until ctx ends, and prints one
// line per change of role: leading (with token=) when el leads, following
// (with leader=) when it follows, and stopped-leading when a term ends
// (its context done, a Follower event, or Run returning while leading).
// It returns once el.Run has returned (it releases the lock if it leads)
// and its events are drained: nil when ctx ended, else Run's error.
func Run(ctx context.Context, w io.Writer, el *mpsync.Election, id string) error {
	_ = measure.Emit(w, measure.EventStarted, id)
	runErr := make(chan error, 1)
	go func() {
		err := el.Run(ctx)
		trace.Mark(StepRunReturned)
		runErr <- err
	}()

	var term <-chan struct{} // the current term's Done, nil when not leading
	events := el.Events()
	for events != nil {
		select {
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			switch ev.Role {
			case mpsync.Leader:
				_ = measure.Emit(w, measure.EventLeading, id, "token", strconv.FormatUint(ev.Token, 10))
				term = ev.Context.Done()
			case mpsync.Follower:
				if term != nil {
					_ = measure.Emit(w, measure.EventStopped, id)
					term = nil
				}
				_ = measure.Emit(w, measure.EventFollowing, id, "leader", ev.Leader)
			}
		case <-term:
			_ = measure.Emit(w, measure.EventStopped, id)
			term = nil
		}
	}
	err := <-runErr
	if term != nil {
		_ = measure.Emit(w, measure.EventStopped, id)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
