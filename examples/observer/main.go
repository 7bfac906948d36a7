// Command observer follows who leads the election "test" without standing
// for election, as a replica that forwards writes to its leader or a
// dashboard would, and prints each change of leader until SIGINT or
// SIGTERM. Run it next to the election example and watch it follow the
// hand-overs.
//
// Usage:
//
//	observer [-name test] [-elector ADDR]
//
// The elector is ADDR, else $MPSYNC_ELECTOR, else http://localhost:13131.
// While the elector cannot be reached, the observer keeps retrying and
// logs a warning on standard error.
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

	"github.com/mpsync/mpsync"
)

func main() {
	name := flag.String("name", "test", "name of the election (the lock) to follow")
	elector := flag.String("elector", "", "elector address (default: $MPSYNC_ELECTOR, else "+mpsync.DefaultElector+")")
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}

	logger, err := zap.NewDevelopment(zap.IncreaseLevel(zap.WarnLevel))
	if err != nil {
		fmt.Fprintln(os.Stderr, "observer:", err)
		os.Exit(2)
	}
	opts := []mpsync.Option{mpsync.WithLogger(logger)}
	if *elector != "" {
		opts = append(opts, mpsync.WithElector(*elector))
	}
	obs, err := mpsync.NewObserver(*name, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "observer:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- obs.Run(ctx) }()
	say("following the leader of %s", obs.Name())
	for h := range obs.Events() { // closed when Run returns
		if h.Identity == "" {
			say("nobody leads (last token %d)", h.Token)
		} else {
			say("%s leads (token %d)", h.Identity, h.Token)
		}
	}
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		say("error: %v", err)
		stop()
		os.Exit(1)
	}
	say("stopped")
}

// say prints one line: the time and what happened.
func say(format string, args ...any) {
	fmt.Printf("%s observer: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
