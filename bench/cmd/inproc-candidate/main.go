// Command inproc-candidate is mpsync's in-process side of the
// leader-election benchmarks: a candidate that campaigns with
// mpsync.NewElection through kube.NewTransport, the Lease logic in its own
// process and no elector, until SIGTERM or SIGINT, when Run releases the
// lock if it leads and Close ends the transport, and it exits.
//
// Usage:
//
//	inproc-candidate -kubeconfig FILE -namespace NS -name LOCK -identity ID [-lease-duration 15s] [-trace]
//
// The Transport is named pod-ID (kube.WithName), as the harness names the
// electors of the elector-backed candidates. On stdout it prints the same
// lines as clientgo-candidate and mpsync-candidate (package
// bench/internal/measure): started, following (leader=...), leading
// (token=...), stopped-leading, exiting. With -trace, also a step line at
// each step of a handover (package internal/trace, and the signal and Run
// returning: bench/internal/campaign).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/bench/internal/campaign"
	"github.com/mpsync/mpsync/bench/internal/measure"
	"github.com/mpsync/mpsync/kube"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig `file` (required)")
	namespace := flag.String("namespace", "default", "`namespace` of the Lease")
	name := flag.String("name", "bench", "`name` of the election")
	identity := flag.String("identity", "", "this candidate's `identity` (required)")
	lease := flag.Duration("lease-duration", kube.DefaultLeaseDuration, "lease duration (kube.WithLeaseDuration)")
	traced := flag.Bool("trace", false, "print a step line at each step of a handover (package internal/trace)")
	flag.Parse()
	if flag.NArg() > 0 || *kubeconfig == "" || *identity == "" {
		flag.Usage()
		os.Exit(2)
	}
	campaign.Trace(*traced, *identity)
	ctx, stop := campaign.SignalContext()
	defer stop()
	if err := run(ctx, *kubeconfig, *namespace, *name, *identity, *lease); err != nil {
		_ = measure.Emit(os.Stdout, measure.EventExiting, *identity, "err", err.Error())
		fmt.Fprintln(os.Stderr, "inproc-candidate:", err)
		stop()
		os.Exit(1)
	}
	_ = measure.Emit(os.Stdout, measure.EventExiting, *identity)
}

func run(ctx context.Context, kubeconfig, namespace, name, id string, lease time.Duration) (err error) {
	cfg, err := kube.RESTConfig(kubeconfig)
	if err != nil {
		return err
	}
	t, err := kube.NewTransport(cfg, namespace, kube.WithLeaseDuration(lease), kube.WithName("pod-"+id))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, t.Close()) }()
	el, err := mpsync.NewElection(name, mpsync.WithTransport(t), mpsync.WithIdentity(id))
	if err != nil {
		return err
	}
	return campaign.Run(ctx, os.Stdout, el, id)
}
