package server

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/mpsync/mpsync/internal/backend"
	"github.com/mpsync/mpsync/internal/core"
)

// FuzzHandler sends arbitrary requests to the handler and checks that none
// gets a 5xx or panics, and that a lock held before them all is still held
// by the same holder afterwards. Streams and waits are cut short by a
// request context of a few milliseconds.
//
//	cd sidecar && go test -run '^$' -fuzz FuzzHandler -fuzztime 30s ./server/
func FuzzHandler(f *testing.F) {
	corpus := []struct {
		method, target string
		body           string
	}{
		{"GET", "/healthz", ""},
		{"GET", "/readyz", ""},
		{"GET", "/metrics", ""},
		{"GET", "/v1/locks/held", ""},
		{"GET", "/v1/locks/held/watch", ""},
		{"POST", "/v1/locks/held/acquire", `{"identity":"x"}`},
		{"POST", "/v1/locks/held/acquire", `{"identity":"x","wait":true}`},
		{"POST", "/v1/locks/free/acquire", `{"identity":"x"}`},
		{"POST", "/v1/locks/held/renew", `{"session":"s1"}`},
		{"POST", "/v1/locks/held/release", `{"session":"s1"}`},
		{"POST", "/v1/locks/held/release", `{"session":"s1","x":1}`},
		{"GET", "/locks/held", ""},
		{"PUT", "/locks/held", ""},
		{"PUT", "/locks/free", "junk"},
		{"DELETE", "/locks/held", ""},
		{"POST", "/debug/revoke/held", ""},
		{"GET", "/v1/locks/%2e%2e/watch", ""},
		{"POST", "/v1/locks/held/acquire", `{"identity":"\u0000"}`},
		{"POST", "/v1/locks/held/acquire", "{\"identity\":\"\xff\"}"},
		{"GET", "/nope?x=1", ""},
		{"POST", "/v1/locks/free/acquire", `{"IDENTITY":"x"}`},
		{"POST", "/v1/locks/free/acquire", `{"identity":"x","identity":"y"}`},
		{"POST", "/v1/locks/free/acquire", `{"identity":"\ud800"}`},
		{"POST", "/v1/locks/free/acquire", `{"identity":"\udc00x"}`},
		{"POST", "/v1/locks/free/acquire", `{"identity":"\ud800\u0041"}`},
		{"POST", "/v1/locks/free/acquire", `{"identity":"\ud83d\ude00"}`},
		{"POST", "/v1/locks/held/renew", `{"Session":"s1"}`},
		{"POST", "/v1/locks/held/release", `{"session":"s1","session":"s2"}`},
		{"POST", "/v1/locks/held/release", `{"session":"\ud800"}`},
	}
	for _, s := range corpus {
		f.Add(s.method, s.target, []byte(s.body))
	}

	mem, err := backend.NewMemory(time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	s, err := New(Config{Backend: mem, Identity: "elector-1", LegacyTTL: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			f.Errorf("Shutdown: %v", err)
		}
	})
	// Held directly in the backend: no session of it is known to the
	// handler, so no request can release it.
	kept, err := mem.Acquire(context.Background(), core.Request{Name: "held", Identity: "keeper"})
	if err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, method, target string, body []byte) {
		u, err := url.ParseRequestURI(target)
		if err != nil || !validMethod(method) {
			return // net/http would not route it to a handler
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		defer cancel()
		req := (&http.Request{
			Method:     method,
			URL:        u,
			RequestURI: target,
			Proto:      "HTTP/1.1",
			ProtoMajor: 1,
			ProtoMinor: 1,
			Header:     http.Header{},
			Body:       io.NopCloser(bytes.NewReader(body)),
			Host:       "elector",
		}).WithContext(ctx)
		req.ContentLength = int64(len(body))
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Errorf("%s %s %q: status %d, body %s", method, target, body, rec.Code, rec.Body)
		}
		select {
		case <-kept.Done():
			t.Fatalf("%s %s %q ended the kept lease: %v", method, target, body, kept.Err())
		default:
		}
		if h, ok := mem.Holder("held"); !ok || h.Identity != "keeper" || h.Token != kept.Token() {
			t.Fatalf("%s %s %q: held is %+v (held %v), want keeper with token %d", method, target, body, h, ok, kept.Token())
		}
	})
}

// validMethod reports whether m is an HTTP token, as net/http requires of a
// method before it calls a handler.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range []byte(m) {
		if c <= ' ' || c >= 0x7f || bytes.IndexByte([]byte(`"(),/:;<=>?@[\]{}`), c) >= 0 {
			return false
		}
	}
	return true
}
