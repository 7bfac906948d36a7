package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/wire"
)

// writeJSON answers status with v as the JSON body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own types get here; none can fail to marshal.
		panic(fmt.Sprintf("server: marshal %T: %v", v, err))
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeError answers status with an ErrorBody.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, wire.ErrorBody{Error: msg, Code: code})
}

// checkName answers 400 invalid_name and reports false if name cannot name
// a lock.
func checkName(w http.ResponseWriter, name string) bool {
	if err := core.ValidateName(name); err != nil {
		writeError(w, http.StatusBadRequest, wire.CodeInvalidName, err.Error())
		return false
	}
	return true
}

// readBody reads the whole request body, at most wire.MaxBodyBytes,
// answering 413, 408 or 400 and reporting false if it cannot. Reading to the
// end matters: only then does net/http watch the connection, so that the
// request's context ends when the client goes away.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if r.ContentLength > wire.MaxBodyBytes {
		writeError(w, http.StatusRequestEntityTooLarge, wire.CodeTooLarge,
			fmt.Sprintf("request body of %d bytes is over the limit of %d", r.ContentLength, wire.MaxBodyBytes))
		return nil, false
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, wire.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			writeError(w, http.StatusRequestEntityTooLarge, wire.CodeTooLarge,
				fmt.Sprintf("request body is over the limit of %d bytes", wire.MaxBodyBytes))
		case errors.Is(err, os.ErrDeadlineExceeded):
			writeError(w, http.StatusRequestTimeout, wire.CodeBadRequest, "request body not received in time")
		default:
			writeError(w, http.StatusBadRequest, wire.CodeBadRequest, fmt.Sprintf("reading request body: %v", err))
		}
		return nil, false
	}
	return b, true
}

// decodeBody reads the body as exactly one JSON object of v's type, with no
// unknown fields and nothing after it, answering 4xx and reporting false if
// it is not.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	b, ok := readBody(w, r)
	if !ok {
		return false
	}
	if err := decodeStrict(b, v); err != nil {
		writeError(w, http.StatusBadRequest, wire.CodeBadRequest, err.Error())
		return false
	}
	return true
}

// decodeStrict decodes b, one JSON object, into v, a pointer to a struct
// whose fields have json tags. It refuses what encoding/json lets through:
// field names in another case than the tag's (json matches them
// case-insensitively), a key given twice (json keeps the last), and \u
// escapes that are not valid UTF-16 (json stores U+FFFD), besides unknown
// fields, invalid UTF-8 and data after the object.
func decodeStrict(b []byte, v any) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return errors.New("empty request body: want a JSON object")
	}
	if !utf8.Valid(b) {
		// encoding/json would quietly turn bad bytes into U+FFFD.
		return errors.New("request body is not valid UTF-8")
	}
	if err := checkEscapes(b); err != nil {
		return fmt.Errorf("malformed JSON body: %w", err)
	}
	if err := checkKeys(b, jsonFields(v)); err != nil {
		return fmt.Errorf("malformed JSON body: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("malformed JSON body: data after the JSON object")
	}
	return nil
}

// jsonFields returns the JSON field names of the struct v points to.
func jsonFields(v any) map[string]bool {
	t := reflect.TypeOf(v).Elem()
	names := make(map[string]bool, t.NumField())
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			names[name] = true
		}
	}
	return names
}

// checkKeys reports the first key of the top-level object in b that is not
// exactly one of fields, or that comes twice. What is not an object is left
// to the decoder to refuse.
func checkKeys(b []byte, fields map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil // malformed: the decoder says how
		}
		key, _ := tok.(string)
		if !fields[key] {
			for f := range fields {
				if strings.EqualFold(f, key) {
					return fmt.Errorf("field %q is spelled %q: field names are case-sensitive", f, key)
				}
			}
			return fmt.Errorf("unknown field %q", key)
		}
		if seen[key] {
			return fmt.Errorf("duplicate field %q", key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil
		}
	}
	return nil
}

// checkEscapes reports the first \u escape in a string of b that is not
// valid UTF-16: a lone surrogate, high or low. b is valid UTF-8.
func checkEscapes(b []byte) error {
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case !inString:
			inString = c == '"'
		case c == '"':
			inString = false
		case c == '\\' && i+1 < len(b):
			i++
			if b[i] != 'u' {
				continue
			}
			r, ok := hex4(b, i+1)
			if !ok {
				continue // not an escape at all: the decoder refuses it
			}
			i += 4
			switch {
			case utf16.IsSurrogate(r) && r >= 0xdc00:
				return fmt.Errorf("invalid escape \\u%04x: a low surrogate without a high one before it", r)
			case utf16.IsSurrogate(r):
				lo, ok := rune(0), i+2 < len(b) && b[i+1] == '\\' && b[i+2] == 'u'
				if ok {
					lo, ok = hex4(b, i+3)
				}
				if !ok || lo < 0xdc00 || lo > 0xdfff {
					return fmt.Errorf("invalid escape \\u%04x: a high surrogate not followed by a low one", r)
				}
				i += 6
			}
		}
	}
	return nil
}

// hex4 decodes the four hex digits at b[i:], reporting false if they are not.
func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[i:i+4]), 16, 16)
	if err != nil {
		return 0, false
	}
	return rune(n), true
}

// stream writes NDJSON lines, each flushed at once. After a write fails
// (the client is gone or stalled), every later send fails with that error
// without writing.
//
// A stream of an HTTP/1.1 request can be detached from net/http once its
// header is out (detach): it then writes its chunks straight to the
// connection, which it closes at its end. That lets a held lock's stream
// go on without its handler: net/http keeps, for every connection it
// serves, a goroutine, a reader goroutine and about 10 KiB of buffers, on
// top of the handler's own stack, as long as the handler runs. A detached
// stream is served by one goroutine of its owner's at a time, which both
// writes it and reads its connection (wait); only wake may be called from
// others.
type stream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
	err     error // the first write error

	// detachable: the stream may be detached (allowDetach); its header
	// then says Connection: close.
	detachable bool
	raw        net.Conn // the hijacked connection, once detached
	// buf holds the chunk being written, kept for the next, and what wait
	// reads past the request; once detached.
	buf    []byte
	woken  atomic.Bool // wake was called
	closed bool
}

func newStream(w http.ResponseWriter) *stream {
	return &stream{w: w, rc: http.NewResponseController(w)}
}

// send writes v as one line, with the 200 header first if not sent yet. The
// write must complete within timeout.
func (st *stream) send(v any, timeout time.Duration) error {
	if st.err != nil {
		return st.err
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("server: marshal %T: %v", v, err))
	}
	return st.sendLine(append(b, '\n'), timeout)
}

// sendLine writes line, which ends in a newline, as send does.
func (st *stream) sendLine(line []byte, timeout time.Duration) error {
	if st.err != nil {
		return st.err
	}
	st.start()
	if st.raw != nil {
		st.err = st.writeChunk(line, timeout)
		return st.err
	}
	// Writers that cannot take a deadline (httptest.ResponseRecorder) do
	// not block either.
	_ = st.rc.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := st.w.Write(line); err != nil {
		st.err = err
		return err
	}
	st.err = st.rc.Flush()
	return st.err
}

// heartbeatLine is the heartbeat event as a line, encoded once: a held
// stream writes one a second, and encoding it each time would cost a
// reflection-deep stack on every stream's goroutine as well as the CPU.
var heartbeatLine = func() []byte {
	b, err := json.Marshal(wire.Event{Type: wire.EventHeartbeat})
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}()

// start writes the 200 header, unless it has been.
func (st *stream) start() {
	if st.started {
		return
	}
	st.started = true
	h := st.w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if st.detachable {
		// Whether or not it is detached, the connection ends with the
		// stream: a client must not take a detached stream's closed
		// connection for one to reuse.
		h.Set("Connection", "close")
	}
	st.w.WriteHeader(http.StatusOK)
}

// allowDetach lets detach take the stream's connection later, if r is an
// HTTP/1.1 request on a connection that can be hijacked. Call it before
// the first send.
func (st *stream) allowDetach(r *http.Request) {
	_, hijacker := st.w.(http.Hijacker)
	st.detachable = !st.started && hijacker && r.ProtoMajor == 1 && r.ProtoMinor >= 1
}

// writeChunk writes p as one chunk of the chunked body of a detached
// stream, within timeout.
func (st *stream) writeChunk(p []byte, timeout time.Duration) error {
	st.buf = strconv.AppendInt(st.buf[:0], int64(len(p)), 16)
	st.buf = append(st.buf, "\r\n"...)
	st.buf = append(st.buf, p...)
	st.buf = append(st.buf, "\r\n"...)
	_ = st.raw.SetWriteDeadline(time.Now().Add(timeout))
	_, err := st.raw.Write(st.buf)
	return err
}

// detach takes the stream's connection from net/http, if allowDetach
// allowed it, after writing the header and every line sent so far: from
// then on the stream writes the chunked body itself, the handler may
// return, one goroutine serves the stream (its writes and wait), and end
// finishes the body and closes the connection. It reports false (and
// nothing has changed) where detaching is not possible: HTTP/2, HTTP/1.0,
// a ResponseWriter that cannot hijack, a write that failed.
func (st *stream) detach() bool {
	if !st.detachable || st.err != nil {
		return false
	}
	st.start()
	if st.err = st.rc.Flush(); st.err != nil {
		return false
	}
	conn, _, err := st.rc.Hijack() // writes out what net/http still buffers
	if err != nil {
		return false
	}
	_ = conn.SetDeadline(time.Time{})
	// Keep nothing of net/http's: the response refers to the connection's
	// state, buffers included, which the handler's return would free.
	st.w, st.rc = nil, nil
	st.raw, st.buf = conn, make([]byte, 0, detachedBuf)
	return true
}

// detachedBuf is the room a detached stream keeps for a chunk (a heartbeat
// takes 27 bytes; longer lines make it grow) and for what wait reads.
const detachedBuf = 64

// wait reads the detached stream's connection until at, until wake is
// called, or until the client closes the connection or it fails (gone is
// then true), whichever comes first; it returns at once if wake has been
// called. A read that fails is how the client's close shows, as
// r.Context() ends otherwise. Whatever the client sends past its request
// is read and ignored, as net/http ignores it while a handler runs.
func (st *stream) wait(at time.Time) (gone bool) {
	for {
		// The deadline first, then the check: a wake between the two has
		// moved the deadline into the past, and one before them is seen.
		_ = st.raw.SetReadDeadline(at)
		if st.woken.Load() {
			return false
		}
		_, err := st.raw.Read(st.buf[:cap(st.buf)])
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			return false
		default:
			return true
		}
	}
}

// wake makes the wait of a detached stream under way, and every later one,
// return at once. Unlike the stream's other methods, any goroutine may call
// it, also after end.
func (st *stream) wake() {
	st.woken.Store(true)
	_ = st.raw.SetReadDeadline(aLongTimeAgo)
}

// aLongTimeAgo is a read deadline in the past: a read waiting on it returns
// at once.
var aLongTimeAgo = time.Unix(1, 0)

// heartbeat writes a heartbeat line. Its real work is the write: on a
// stream net/http still serves, net/http stops watching the connection for
// the client's close once the client has sent a byte past its request, so
// there a failing write is the only sign that the client has gone (a
// detached stream also reads its connection: keepDetached).
func (st *stream) heartbeat() error {
	return st.sendLine(heartbeatLine, streamWriteTimeout)
}

// failed reports whether a write to the stream has failed.
func (st *stream) failed() bool { return st.err != nil }

// end ends the stream. On a stream still served by net/http it clears the
// write deadline, which would otherwise outlive this request on a
// kept-alive connection. A detached stream writes the body's last chunk
// (unless a write has failed) and closes the connection. Calling it again
// does nothing.
func (st *stream) end() {
	if st.raw == nil {
		_ = st.rc.SetWriteDeadline(time.Time{})
		return
	}
	if st.closed {
		return
	}
	st.closed = true
	if st.err == nil {
		_ = st.raw.SetWriteDeadline(time.Now().Add(finalWriteTimeout))
		_, _ = st.raw.Write([]byte("0\r\n\r\n"))
	}
	_ = st.raw.Close()
}
