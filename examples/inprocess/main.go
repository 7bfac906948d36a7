// Command inprocess is a leader election with no sidecar: the Lease logic
// runs in this process, through kube.NewTransport, on the pod's own service
// account (rest.InClusterConfig). It runs for leader of the election
// "example-inprocess" and prints when it becomes leader (with its fencing
// token), whom it follows, and when and why it stops leading, until
// SIGINT or SIGTERM; then it releases the Lease, so another replica takes
// over at once.
//
// Usage:
//
//	inprocess [-name example-inprocess] [-namespace NS] [-identity ID] [-kubeconfig FILE]
//
// The namespace is NS, else $POD_NAMESPACE; the identity ID, else
// $POD_NAME, else the host name and process ID. Outside a pod, -kubeconfig
// names a kubeconfig to use instead of the in-cluster configuration.
//
// A replica that crashes (SIGKILL, OOM) leaves its Lease to expire: another
// takes over about the lease duration (15 s) after its last renewal. With
// the elector as a sidecar that takes milliseconds; see the README's
// "Sidecar or in-process?".
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

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/kube"
)

func main() {
	name := flag.String("name", "example-inprocess", "name of the election (the Lease campaigned for)")
	namespace := flag.String("namespace", os.Getenv("POD_NAMESPACE"), "namespace of the Lease (default: $POD_NAMESPACE)")
	identity := flag.String("identity", os.Getenv("POD_NAME"), "who this candidate is (default: $POD_NAME, else host name and process ID)")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file to use instead of the pod's service account")
	flag.Parse()
	if flag.NArg() > 0 || *namespace == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*name, *namespace, *identity, *kubeconfig); err != nil {
		fmt.Fprintln(os.Stderr, "inprocess:", err)
		os.Exit(1)
	}
}

func run(name, namespace, identity, kubeconfig string) error {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return err
	}
	t, err := kube.NewTransport(cfg, namespace)
	if err != nil {
		return err
	}
	// Close releases the Lease if this replica leads.
	defer t.Close()

	opts := []mpsync.Option{mpsync.WithTransport(t)}
	if identity != "" {
		opts = append(opts, mpsync.WithIdentity(identity))
	}
	el, err := mpsync.NewElection(name, opts...)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- el.Run(ctx) }()
	say(el, "running for leader of %s/%s", namespace, el.Name())
	for ev := range el.Events() {
		switch ev.Role {
		case mpsync.Leader:
			say(el, "I am the leader (token %d)", ev.Token)
			go func(term context.Context) {
				<-term.Done()
				if cause := context.Cause(term); errors.Is(cause, mpsync.ErrLockLost) {
					say(el, "I lost leadership: %v", cause)
				}
			}(ev.Context)
		case mpsync.Follower:
			if ev.Leader == "" {
				say(el, "no leader")
			} else {
				say(el, "following %s", ev.Leader)
			}
		}
	}
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	say(el, "stopped")
	return nil
}

func say(el *mpsync.Election, format string, args ...any) {
	fmt.Printf("%s %s: %s\n", time.Now().Format("15:04:05.000"), el.Identity(), fmt.Sprintf(format, args...))
}
