// Package transport is the SDK's HTTP client for the elector's v1 protocol
// (PROTOCOL.md): one long-lived streamed request per held lock or watch, over
// which the elector pushes grants, losses and holder changes.
//
// Each method does one exchange and never retries; renewal timing, retries
// and event fan-out belong to the SDK's Lock and Election. Errors wrap the
// values of package core: core.ErrLocked, core.ErrInvalidName,
// core.ErrLockLost, core.ErrUnavailable (and core.ErrRevoked or
// core.ErrExpired with a loss). When a caller's context ends, methods return
// ctx.Err() unwrapped.
package transport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/wire"
)

// maxLine is the longest NDJSON line a stream may send.
const maxLine = 64 << 10

// errUnknownSession is wrapped, with core.ErrLockLost, in the error of a
// renew or release whose session the elector does not know as live on that
// lock (404 unknown_session): its lease has ended.
var errUnknownSession = errors.New("transport: session unknown to the elector")

// Client talks to one elector. Create it with New; it is safe for concurrent
// use. Its exchanges share one connection pool, which keeps idle
// connections for reuse; CloseIdleConnections drops them, and Close ends
// every exchange for good.
type Client struct {
	base string // "http://host:port"
	tr   *http.Transport
	hc   *http.Client
	// armed counts the streams whose silence is armed (see Silence).
	armed atomic.Int64
	// spares keeps a connection idle for renewals and releases (spare.go).
	spares spares

	// closed ends when Close is called; every stream's request is
	// derived from it or cancelled with it.
	closed context.Context
	close  context.CancelFunc
}

// New returns a client for the elector at addr: "http://127.0.0.1:13131",
// or "127.0.0.1:13131" meaning the same. It only parses addr; nothing is
// sent until a method is called.
func New(addr string) (*Client, error) {
	base, err := baseURL(addr)
	if err != nil {
		return nil, err
	}
	c := &Client{base: base}
	tr := &http.Transport{
		Proxy:                 nil, // the elector is on loopback; never go through a proxy
		DialContext:           c.spares.dialer((&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}).DialContext),
		MaxIdleConns:          32,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       60 * time.Second,
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
	}
	c.closed, c.close = context.WithCancel(context.Background())
	c.tr = tr
	c.hc = &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

func baseURL(addr string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("transport: invalid elector address %q: %s", addr, why)
	}
	if addr == "" {
		return bad("empty")
	}
	raw := addr
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return bad(err.Error())
	case u.Scheme != "http" && u.Scheme != "https":
		return bad("the scheme must be http or https")
	case u.Host == "":
		return bad("no host")
	case u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return bad("want only scheme, host and port")
	}
	return u.Scheme + "://" + u.Host, nil
}

// Addr is the elector's base URL, such as "http://127.0.0.1:13131".
func (c *Client) Addr() string { return c.base }

// CloseIdleConnections closes the connections that carry no request now.
// Streams of live leases and watches are not affected.
func (c *Client) CloseIdleConnections() { c.tr.CloseIdleConnections() }

// Close ends the Client: later calls fail at once with an error wrapping
// core.ErrUnavailable and core.ErrClosed; the streams of live leases end,
// as if the elector had gone away (their Err wraps core.ErrLockLost and
// core.ErrUnavailable; the elector releases what they held), and watches
// return such an error; then the idle connections are closed. A renew or
// release under way finishes, bounded by its own context, and closes its
// connection. Close does not wait for the streams' readers to finish. It
// may be called more than once.
func (c *Client) Close() {
	c.close()
	c.tr.CloseIdleConnections()
}

// dropIfClosed closes the idle connections if Close has been called: a
// request that was under way at Close may have put its connection back in
// the pool after Close closed the idle ones. Call it once the request's
// body has been read and closed.
func (c *Client) dropIfClosed() {
	if c.closed.Err() != nil {
		c.tr.CloseIdleConnections()
	}
}

// closedError is the error of an exchange refused or cut by Close.
func (c *Client) closedError() error {
	return fmt.Errorf("%w: %w: the client of the elector at %s was closed", core.ErrUnavailable, core.ErrClosed, c.base)
}

func (c *Client) lockURL(name, op string) string {
	u := c.base + "/v1/locks/" + url.PathEscape(name)
	if op != "" {
		u += "/" + op
	}
	return u
}

// unreachable wraps a failure to exchange with the elector.
func (c *Client) unreachable(err error) error {
	return fmt.Errorf("%w: cannot reach the elector at %s (is the elector sidecar running?): %w", core.ErrUnavailable, c.base, err)
}

// answerError turns an answer other than 200 into an error wrapping the core
// value its code stands for.
func (c *Client) answerError(resp *http.Response, name string) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxLine))
	var eb wire.ErrorBody
	if err := json.Unmarshal(b, &eb); err != nil || eb.Code == "" {
		return fmt.Errorf("transport: the elector at %s answered %s with no mpsync error body (is something else listening there?)", c.base, resp.Status)
	}
	return c.codeError(eb, resp.Status, name)
}

// codeError is the error of an error body, or of a stream's error line
// (status then names the line): it wraps the core value its code stands
// for.
func (c *Client) codeError(eb wire.ErrorBody, status, name string) error {
	switch eb.Code {
	case wire.CodeLocked:
		return lockedError(name, eb.Holder)
	case wire.CodeInvalidName:
		return fmt.Errorf("%w: the elector says: %s", core.ErrInvalidName, eb.Error)
	case wire.CodeLost:
		return fmt.Errorf("%w: the elector says: %s", core.ErrLockLost, eb.Error)
	case wire.CodeUnknownSession:
		return fmt.Errorf("%w: %w: the elector says: %s", core.ErrLockLost, errUnknownSession, eb.Error)
	case wire.CodeUnavailable:
		return fmt.Errorf("%w: the elector at %s says: %s", core.ErrUnavailable, c.base, eb.Error)
	}
	return fmt.Errorf("transport: the elector at %s answered %s (%s): %s", c.base, status, eb.Code, eb.Error)
}

// do sends one request with a JSON body (nil for none) and returns the
// answer if its status is 200. After Close it fails at once.
func (c *Client) do(ctx context.Context, method, u, name string, body any) (*http.Response, error) {
	if c.closed.Err() != nil {
		return nil, c.closedError()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("transport: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(c.spares.track(ctx), method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, c.unreachable(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer c.dropIfClosed()
		defer resp.Body.Close()
		return nil, c.answerError(resp, name)
	}
	return resp, nil
}

// post sends one request and decodes its JSON answer into out (nil to
// discard it).
func (c *Client) post(ctx context.Context, u, name string, body, out any) error {
	resp, err := c.do(ctx, http.MethodPost, u, name, body)
	if err != nil {
		return err
	}
	defer c.dropIfClosed()
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxLine))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.unreachable(err)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("transport: the elector at %s sent a malformed answer: %w", c.base, err)
	}
	return nil
}

// readEvent reads one NDJSON line. Blank lines are skipped.
func readEvent(br *bufio.Reader) (wire.Event, error) {
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return wire.Event{}, fmt.Errorf("stream line longer than %d bytes", maxLine)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			if err != nil {
				return wire.Event{}, err
			}
			continue
		}
		if err != nil {
			// A last line without its newline: the stream was cut.
			return wire.Event{}, io.ErrUnexpectedEOF
		}
		var ev wire.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return wire.Event{}, fmt.Errorf("malformed stream line: %w", err)
		}
		return ev, nil
	}
}

// Acquire asks the elector for the lock name on behalf of identity. If the
// lock is free it is granted at once; otherwise, without wait, Acquire fails
// with an error wrapping core.ErrLocked, and with wait it blocks until the
// lock is granted or ctx ends (ctx.Err(), and nothing is left held: closing
// the request makes the elector drop the wait, or release a grant that
// crossed with it).
//
// ctx bounds only the acquisition. The returned Lease holds a stream of its
// own that lives until Release, a loss, or the elector going away.
func (c *Client) Acquire(ctx context.Context, name, identity string, wait bool) (*Lease, error) {
	if err := core.ValidateName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// The stream outlives ctx: it is cancelled with ctx only until the
	// grant, and with the Client's Close always.
	streamCtx, cancel := context.WithCancel(c.closed)
	stopWatching := context.AfterFunc(ctx, cancel)

	resp, err := c.do(streamCtx, http.MethodPost, c.lockURL(name, "acquire"), name, wire.AcquireRequest{Identity: identity, Wait: wait})
	if err != nil {
		stopWatching()
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if c.closed.Err() != nil {
			return nil, c.closedError()
		}
		return nil, err
	}
	quiet := newSilence(cancel, &c.armed)
	br := bufio.NewReaderSize(resp.Body, maxLine)
	ev, err := c.grantLine(br, quiet, name)
	if !stopWatching() || err != nil {
		// ctx ended (the request is cancelled, so the elector releases
		// anything it granted), the elector refused or went silent, or the
		// stream is unusable.
		quiet.stop()
		cancel()
		resp.Body.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if c.closed.Err() != nil {
			return nil, c.closedError()
		}
		return nil, err
	}
	l := &Lease{
		c:        c,
		name:     name,
		session:  ev.Session,
		token:    ev.Token,
		validity: time.Duration(ev.ValidityMs) * time.Millisecond,
		cancel:   cancel,
		quiet:    quiet,
		done:     make(chan struct{}),
	}
	go l.run(br, resp.Body)
	c.ensureSpare() // for its renewals and its release
	return l, nil
}

// grantLine reads an acquire stream up to its acquired line, skipping
// waiting and heartbeat lines. An error line before it fails as its code
// would as a status (core.ErrUnavailable, ...).
func (c *Client) grantLine(br *bufio.Reader, quiet *silence, name string) (wire.Event, error) {
	for {
		ev, err := readEvent(br)
		if err != nil {
			return wire.Event{}, fmt.Errorf("%w: acquire stream from the elector at %s: %w", core.ErrUnavailable, c.base, quiet.explain(err))
		}
		quiet.heard(ev)
		switch ev.Type {
		case wire.EventAcquired:
			return ev, nil
		case wire.EventError:
			return wire.Event{}, c.codeError(wire.ErrorBody{Error: ev.Error, Code: ev.Code, Holder: ev.Holder}, "an error line", name)
		}
		// waiting, heartbeat, and types for later versions: read on.
	}
}

// Watch calls fn with the state of the lock name, then again after every
// change of holder, until ctx ends (it returns ctx.Err()) or the stream
// fails or falls silent for Silence (an error wrapping
// core.ErrUnavailable). fn is called from the goroutine that called Watch,
// one call at a time. The stream is read on while fn runs, so a slow fn
// neither stalls the stream (its heartbeats keep it alive) nor gets a
// backlog: changes during a call coalesce, and the next call gets the
// latest state, never a stale one.
func (c *Client) Watch(ctx context.Context, name string, fn func(core.Holder)) error {
	if err := core.ValidateName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.closed, cancel)()
	resp, err := c.do(streamCtx, http.MethodGet, c.lockURL(name, "watch"), name, nil)
	if err != nil {
		return c.watchEnded(ctx, err)
	}
	defer resp.Body.Close()
	quiet := newSilence(cancel, &c.armed)
	defer quiet.stop()
	latest := make(chan core.Holder, 1)
	ended := make(chan error, 1)
	go func() { ended <- c.readHolders(bufio.NewReaderSize(resp.Body, maxLine), quiet, latest) }()
	// Runs before quiet.stop: the reader, which calls quiet.heard, has
	// ended by then.
	defer func() { cancel(); <-ended }()
	for {
		select {
		case h := <-latest:
			fn(h)
			if err := ctx.Err(); err != nil {
				return err
			}
		case err := <-ended:
			ended <- err // for the deferred join
			if ctx.Err() == nil {
				select {
				case h := <-latest: // the last state read before the end
					fn(h)
				default:
				}
			}
			return c.watchEnded(ctx, err)
		}
	}
}

// readHolders reads a watch stream until it fails or the elector ends it,
// keeping the newest holder event, unread, in latest (capacity 1): an
// older unread one is replaced.
func (c *Client) readHolders(br *bufio.Reader, quiet *silence, latest chan core.Holder) error {
	for {
		ev, err := readEvent(br)
		if err != nil {
			return fmt.Errorf("%w: watch stream from the elector at %s broke: %w", core.ErrUnavailable, c.base, quiet.explain(err))
		}
		quiet.heard(ev)
		switch ev.Type {
		case wire.EventHolder:
			select {
			case <-latest:
			default:
			}
			latest <- core.Holder{Identity: ev.Holder, Token: ev.Token}
		case wire.EventError:
			return fmt.Errorf("%w: the elector at %s ended the watch: %s", core.ErrUnavailable, c.base, ev.Error)
		}
	}
}

// watchEnded is what Watch returns when its exchange ended with err:
// ctx's error if ctx ended, the closed-client error after Close, else err.
func (c *Client) watchEnded(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if c.closed.Err() != nil {
		return c.closedError()
	}
	return err
}

// lockedError is the refusal of an acquire of name, held by holder (empty
// if the elector did not say).
func lockedError(name, holder string) *core.LockedError {
	detail := fmt.Sprintf("%q", name)
	if holder != "" {
		detail = fmt.Sprintf("%q holds %q", holder, name)
	}
	return &core.LockedError{Name: name, Holder: holder, Detail: detail}
}
