// Command mpsync-candidate is mpsync's side of the leader-election
// benchmarks: a candidate that campaigns with mpsync.NewElection through
// one elector until SIGTERM or SIGINT, when Run releases the lock if it
// leads, and exits.
//
// Usage:
//
//	mpsync-candidate -elector ADDR -name LOCK -identity ID [-trace]
//
// On stdout it prints the same lines as clientgo-candidate (package
// bench/internal/measure): started, following (leader=...), leading
// (token=...), stopped-leading, exiting. With -trace, also a step line at
// each step of a handover (package internal/trace, and the signal and Run
// returning: bench/internal/campaign).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/bench/internal/campaign"
	"github.com/mpsync/mpsync/bench/internal/measure"
)

func main() {
	elector := flag.String("elector", "", "elector `address` (required)")
	name := flag.String("name", "bench", "`name` of the election")
	identity := flag.String("identity", "", "this candidate's `identity` (required)")
	traced := flag.Bool("trace", false, "print a step line at each step of a handover (package internal/trace)")
	flag.Parse()
	if flag.NArg() > 0 || *elector == "" || *identity == "" {
		flag.Usage()
		os.Exit(2)
	}
	campaign.Trace(*traced, *identity)
	ctx, stop := campaign.SignalContext()
	defer stop()
	if err := run(ctx, *elector, *name, *identity); err != nil {
		_ = measure.Emit(os.Stdout, measure.EventExiting, *identity, "err", err.Error())
		fmt.Fprintln(os.Stderr, "mpsync-candidate:", err)
		stop()
		os.Exit(1)
	}
	_ = measure.Emit(os.Stdout, measure.EventExiting, *identity)
}

func run(ctx context.Context, elector, name, id string) error {
	el, err := mpsync.NewElection(name, mpsync.WithElector(elector), mpsync.WithIdentity(id))
	if err != nil {
		return err
	}
	return campaign.Run(ctx, os.Stdout, el, id)
}
