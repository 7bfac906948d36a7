package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mpsync/mpsync/internal/core"
	"github.com/mpsync/mpsync/internal/transport"
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
	writeJSON(w, status, transport.ErrorBody{Error: msg, Code: code})
}

// checkName answers 400 invalid_name and reports false if name cannot name
// a lock.
func checkName(w http.ResponseWriter, name string) bool {
	if err := core.ValidateName(name); err != nil {
		writeError(w, http.StatusBadRequest, transport.CodeInvalidName, err.Error())
		return false
	}
	return true
}

// readBody reads the whole request body, at most transport.MaxBodyBytes,
// answering 413, 408 or 400 and reporting false if it cannot. Reading to the
// end matters: only then does net/http watch the connection, so that the
// request's context ends when the client goes away.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if r.ContentLength > transport.MaxBodyBytes {
		writeError(w, http.StatusRequestEntityTooLarge, transport.CodeTooLarge,
			fmt.Sprintf("request body of %d bytes is over the limit of %d", r.ContentLength, transport.MaxBodyBytes))
		return nil, false
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, transport.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			writeError(w, http.StatusRequestEntityTooLarge, transport.CodeTooLarge,
				fmt.Sprintf("request body is over the limit of %d bytes", transport.MaxBodyBytes))
		case errors.Is(err, os.ErrDeadlineExceeded):
			writeError(w, http.StatusRequestTimeout, transport.CodeBadRequest, "request body not received in time")
		default:
			writeError(w, http.StatusBadRequest, transport.CodeBadRequest, fmt.Sprintf("reading request body: %v", err))
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
		writeError(w, http.StatusBadRequest, transport.CodeBadRequest, err.Error())
		return false
	}
	return true
}

func decodeStrict(b []byte, v any) error {
	if len(bytes.TrimSpace(b)) == 0 {
		return errors.New("empty request body: want a JSON object")
	}
	if !utf8.Valid(b) {
		// encoding/json would quietly turn bad bytes into U+FFFD.
		return errors.New("request body is not valid UTF-8")
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

// checkIdentity reports what is wrong with an acquire request's identity.
func checkIdentity(id string) error {
	switch {
	case id == "":
		return errors.New(`"identity" is required`)
	case len(id) > transport.MaxIdentityLength:
		return fmt.Errorf(`"identity" is %d bytes, at most %d`, len(id), transport.MaxIdentityLength)
	case !utf8.ValidString(id):
		return errors.New(`"identity" is not valid UTF-8`)
	}
	for _, c := range id {
		if unicode.IsControl(c) {
			return errors.New(`"identity" contains a control character`)
		}
	}
	return nil
}

// stream writes NDJSON lines, each flushed at once. After a write fails
// (the client is gone or stalled), every later send fails with that error
// without writing.
type stream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
	err     error // the first write error
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
	if !st.started {
		st.started = true
		h := st.w.Header()
		h.Set("Content-Type", "application/x-ndjson")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		st.w.WriteHeader(http.StatusOK)
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("server: marshal %T: %v", v, err))
	}
	// Writers that cannot take a deadline (httptest.ResponseRecorder) do
	// not block either.
	_ = st.rc.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := st.w.Write(append(b, '\n')); err != nil {
		st.err = err
		return err
	}
	st.err = st.rc.Flush()
	return st.err
}

// heartbeat writes a heartbeat line. Its real work is the write: net/http
// stops watching a connection for the client's close once the client has
// sent a byte past its request, so on a quiet stream a failing write is
// the only sign that the client has gone.
func (st *stream) heartbeat() error {
	return st.send(transport.Event{Type: transport.EventHeartbeat}, streamWriteTimeout)
}

// failed reports whether a write to the stream has failed.
func (st *stream) failed() bool { return st.err != nil }

// end clears the write deadline, which would otherwise outlive this request
// on a kept-alive connection.
func (st *stream) end() {
	_ = st.rc.SetWriteDeadline(time.Time{})
}
