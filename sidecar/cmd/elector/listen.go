package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// defaultListen is the default --listen: both loopback addresses on port
// 13131, since Metaparticle Sync's clients dial http://localhost:13131,
// which some resolvers answer with ::1 first and some clients do not retry
// on 127.0.0.1.
const defaultListen = "localhost:13131"

// listenValue is the --listen flag: one address, which may be given more
// than once or as a comma-separated list. The first value set replaces the
// default. Each address is host:port with a port from 0 to 65535 and a host
// that is an IP address, empty (every interface) or "localhost", which
// means both loopback addresses (expandListen).
type listenValue struct {
	addrs []string
	set   bool
}

func (v *listenValue) String() string {
	if v == nil {
		return ""
	}
	return strings.Join(v.addrs, ",")
}

func (v *listenValue) Set(s string) error {
	if !v.set {
		v.addrs, v.set = nil, true
	}
	for a := range strings.SplitSeq(s, ",") {
		a = strings.TrimSpace(a)
		if err := checkListenAddr(a); err != nil {
			return err
		}
		v.addrs = append(v.addrs, a)
	}
	return nil
}

// checkListenAddr validates one address of --listen.
func checkListenAddr(a string) error {
	if a == "" {
		return errors.New("empty address")
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q: want host:port (127.0.0.1:13131, [::1]:13131, localhost:13131): %v", a, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", a, port)
	}
	if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		return fmt.Errorf("%q: host %q is neither an IP address nor localhost", a, host)
	}
	return nil
}

// expandListen turns validated --listen addresses into the addresses to
// bind: "localhost:P" becomes 127.0.0.1:P and, when ipv6 is true (the host
// has an IPv6 loopback address), [::1]:P. Duplicates are dropped.
func expandListen(addrs []string, ipv6 bool) []string {
	var out []string
	add := func(a string) {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		if host != "localhost" {
			add(a)
			continue
		}
		add(net.JoinHostPort("127.0.0.1", port))
		if ipv6 {
			add(net.JoinHostPort("::1", port))
		}
	}
	return out
}

// hasIPv6Loopback reports whether this host can bind ::1.
func hasIPv6Loopback() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// listenAll binds every address. Port 0 picks one free port, used on every
// address whose port is 0, so that the elector serves one port on each
// loopback address; if that port is taken on a later address, it tries
// again with another (a few times). On error nothing stays bound.
func listenAll(addrs []string) ([]net.Listener, error) {
	var err error
	for range 5 {
		var lns []net.Listener
		lns, err = bindAll(addrs)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || !hasZeroPort(addrs) {
			return lns, err
		}
	}
	return nil, err
}

func hasZeroPort(addrs []string) bool {
	for _, a := range addrs {
		if _, port, _ := net.SplitHostPort(a); port == "0" {
			return true
		}
	}
	return false
}

func bindAll(addrs []string) ([]net.Listener, error) {
	var (
		lns    []net.Listener
		picked string // the port chosen for the first address of port 0
	)
	for _, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		if port == "0" && picked != "" {
			a = net.JoinHostPort(host, picked)
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		if port == "0" && picked == "" {
			_, picked, _ = net.SplitHostPort(ln.Addr().String())
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// probeAddrs are the addresses probe tries, in order: those of --listen as
// the elector binds them, with an unspecified host (every interface)
// reached through both loopback addresses.
func probeAddrs(addrs []string, ipv6 bool) []string {
	var loop []string
	for _, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		if host == "" || host == "0.0.0.0" || host == "::" {
			a = net.JoinHostPort("localhost", port)
		}
		loop = append(loop, a)
	}
	return expandListen(loop, ipv6)
}

// probeOnce asks the elector at addr for endpoint: nil on 200.
func probeOnce(addr, endpoint string) error {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + addr + "/" + endpoint)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s %s", addr, endpoint, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// listenAddrs is expandListen of addrs on this host; when an address says
// localhost and the host has no IPv6 loopback, it logs that ::1 is left out.
func listenAddrs(addrs []string, log *zap.Logger) []string {
	ipv6 := hasIPv6Loopback()
	if !ipv6 && slices.ContainsFunc(addrs, func(a string) bool { return strings.HasPrefix(a, "localhost:") }) {
		log.Info("no IPv6 loopback on this host: serving localhost on 127.0.0.1 only")
	}
	return expandListen(addrs, ipv6)
}
