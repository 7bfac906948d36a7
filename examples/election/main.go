// Command election is Metaparticle Sync's election example in Go: it runs for
// leader of the election "test" and prints when it becomes leader, whom it
// follows, and when and why it stops being leader, until SIGINT or
// SIGTERM. Run several copies against one elector, kill the leader, and
// watch another take over with a greater fencing token. SIGUSR1 makes the
// leader hand over (Election.Resign) and stay a candidate: it stands aside
// until another candidate leads, for up to 10 seconds.
//
// Usage:
//
//	election [-name test] [-identity ID] [-elector ADDR]
//
// The elector is ADDR, else $MPSYNC_ELECTOR, else http://localhost:13131.
// Failures to reach the elector are logged to standard error while the
// election keeps retrying.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mpsync/mpsync"
)

func main() {
	name := flag.String("name", "test", "name of the election (the lock campaigned for)")
	identity := flag.String("identity", "", "who this candidate is (default: host name and process ID)")
	elector := flag.String("elector", "", "elector address (default: $MPSYNC_ELECTOR, else "+mpsync.DefaultElector+")")
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}

	opts := []mpsync.Option{mpsync.WithLogger(warnings())}
	if *identity != "" {
		opts = append(opts, mpsync.WithIdentity(*identity))
	}
	if *elector != "" {
		opts = append(opts, mpsync.WithElector(*elector))
	}
	el, err := mpsync.NewElection(*name, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "election:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- el.Run(ctx) }()
	say(el, "running for leader of %s", el.Name())
	go handOverOn(ctx, el, syscall.SIGUSR1)
	follow(ctx, el)
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		say(el, "error: %v", err)
		stop()
		os.Exit(1)
	}
	say(el, "stopped")
}

// follow prints el's events until Run closes the channel. It watches the
// current term's context itself, so that a loss is reported as soon as it
// happens, before the Follower event that follows it.
func follow(ctx context.Context, el *mpsync.Election) {
	var term context.Context // the current term's leadership context, if leading
	var lost <-chan struct{} // term.Done(), or nil
	endTerm := func() {
		switch cause := context.Cause(term); {
		case errors.Is(cause, mpsync.ErrResigned):
			say(el, "stepping down: handing over")
		case errors.Is(cause, mpsync.ErrLockLost) || ctx.Err() == nil:
			say(el, "I lost leadership: %v", cause)
		default:
			say(el, "stepping down: shutting down")
		}
		term, lost = nil, nil
	}
	events := el.Events()
	for {
		select {
		case <-lost:
			endTerm()
		case ev, ok := <-events:
			if term != nil && term.Err() != nil {
				endTerm()
			}
			if !ok {
				return
			}
			switch ev.Role {
			case mpsync.Leader:
				term, lost = ev.Context, ev.Context.Done()
				say(el, "I am the leader (token %d)", ev.Token)
			case mpsync.Follower:
				if ev.Leader == "" {
					say(el, "no leader at the moment")
				} else {
					say(el, "following %s (token %d)", ev.Leader, ev.Token)
				}
			}
		}
	}
}

// handOverOn makes el's leader resign each time sig comes, until ctx ends.
// A candidate that is not leader says so and goes on.
func handOverOn(ctx context.Context, el *mpsync.Election, sig os.Signal) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, sig)
	defer signal.Stop(sigs)
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := el.Resign(rctx)
		cancel()
		switch {
		case err == nil:
			say(el, "handed over")
		case errors.Is(err, mpsync.ErrNotHeld):
			say(el, "not leader: nothing to hand over")
		case errors.Is(err, context.DeadlineExceeded):
			say(el, "nobody took over in 10s: running for leader again")
		case ctx.Err() == nil:
			say(el, "hand-over failed: %v", err)
		}
	}
}

// say prints one line: the time, who is speaking, and what happened.
func say(el *mpsync.Election, format string, args ...any) {
	fmt.Printf("%s %s: %s\n", time.Now().Format("15:04:05.000"), el.Identity(), fmt.Sprintf(format, args...))
}

// warnings returns a logger that prints the election's warnings, such as
// an unreachable elector, as single lines on standard error. It leaves out
// the SDK's "lock lost" warning, which follow reports in its own words.
func warnings() *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	enc.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	enc.CallerKey = ""
	enc.StacktraceKey = ""
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), zap.WarnLevel)
	return zap.New(skipLoss{core})
}

// skipLoss is a zapcore.Core that drops "lock lost" entries.
type skipLoss struct{ zapcore.Core }

func (c skipLoss) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if e.Message == "lock lost" {
		return ce
	}
	return c.Core.Check(e, ce)
}

func (c skipLoss) With(fields []zapcore.Field) zapcore.Core { return skipLoss{c.Core.With(fields)} }
