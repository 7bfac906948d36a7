package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/mpsync/mpsync/internal/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecodeStrict(t *testing.T) {
	tests := []struct {
		name string
		body string
		want wire.AcquireRequest
		err  string // part of the error message; "" for success
	}{
		{name: "plain", body: `{"identity":"a","wait":true}`, want: wire.AcquireRequest{Identity: "a", Wait: true}},
		{name: "escaped key", body: `{"identit\u0079":"a"}`, want: wire.AcquireRequest{Identity: "a"}},
		{name: "surrogate pair", body: `{"identity":"\ud83d\ude00"}`, want: wire.AcquireRequest{Identity: "\U0001F600"}},
		{name: "literal U+FFFD", body: "{\"identity\":\"\uFFFD\"}", want: wire.AcquireRequest{Identity: "\uFFFD"}},
		{name: "escaped backslash then u", body: `{"identity":"\\ud800"}`, want: wire.AcquireRequest{Identity: `\ud800`}},
		{name: "upper-case key", body: `{"IDENTITY":"a"}`, err: `field "identity" is spelled "IDENTITY"`},
		{name: "mixed-case key", body: `{"identity":"a","Wait":true}`, err: `field "wait" is spelled "Wait"`},
		{name: "unknown key", body: `{"identity":"a","ttl":5}`, err: `unknown field "ttl"`},
		{name: "duplicate key", body: `{"identity":"a","identity":"b"}`, err: `duplicate field "identity"`},
		{name: "duplicate by escape", body: `{"identity":"a","identit\u0079":"b"}`, err: `duplicate field "identity"`},
		{name: "lone high surrogate", body: `{"identity":"\ud800"}`, err: `high surrogate not followed by a low one`},
		{name: "high surrogate then letter", body: `{"identity":"\ud800x"}`, err: `high surrogate not followed by a low one`},
		{name: "two high surrogates", body: `{"identity":"\ud800\ud800"}`, err: `high surrogate not followed by a low one`},
		{name: "lone low surrogate", body: `{"identity":"\udc00"}`, err: `low surrogate without a high one`},
		{name: "bad escape in key", body: `{"\ud800":"a"}`, err: `high surrogate`},
		{name: "invalid UTF-8", body: "{\"identity\":\"\xff\"}", err: "not valid UTF-8"},
		{name: "trailing data", body: `{"identity":"a"} {}`, err: "data after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got wire.AcquireRequest
			err := decodeStrict([]byte(tt.body), &got)
			if tt.err == "" {
				require.NoError(t, err)
				assert.Equal(t, tt.want, got)
				return
			}
			require.Error(t, err)
			// The message is what the client reads: check it says which.
			assert.Contains(t, err.Error(), tt.err)
		})
	}
}

// TestStrictBodies sends each kind of garbage body to each endpoint that
// takes one: 400 bad_request with a message naming the fault, and nothing
// changes (the kept locks stay with their holders, the free lock stays
// free). POST /debug/revoke takes no body (it reads and ignores one), so
// it is not among them.
func TestStrictBodies(t *testing.T) {
	e := newEnv(t, Config{})
	k := newKeeper(e)
	sess := k.ev.Session
	fresh := e.state("fresh") // free; its token is the table's latest
	garbage := []struct {
		name     string
		acquire  string // body for acquire
		session  string // body for renew and release
		inAnswer string
	}{
		{"upper-case field", `{"IDENTITY":"thief"}`, `{"SESSION":"` + sess + `"}`, "case-sensitive"},
		{"capitalised field", `{"Identity":"thief"}`, `{"Session":"` + sess + `"}`, "case-sensitive"},
		{"duplicate field", `{"identity":"thief","identity":"thief"}`, `{"session":"` + sess + `","session":"` + sess + `"}`, "duplicate field"},
		{"unknown field", `{"identity":"thief","force":true}`, `{"session":"` + sess + `","force":true}`, "unknown field"},
		{"lone high surrogate", `{"identity":"\ud800"}`, `{"session":"\ud800` + sess + `"}`, "high surrogate"},
		{"high surrogate then text", `{"identity":"\ud800thief"}`, `{"session":"` + sess + `\ud800x"}`, "high surrogate"},
		{"lone low surrogate", `{"identity":"\udc00"}`, `{"session":"\udc00"}`, "low surrogate"},
	}
	for _, g := range garbage {
		for _, ep := range []struct{ path, body string }{
			{"/v1/locks/fresh/acquire", g.acquire},
			{"/v1/locks/kept/renew", g.session},
			{"/v1/locks/kept/release", g.session},
		} {
			t.Run(g.name+" "+ep.path, func(t *testing.T) {
				status, _, b := e.do("POST", ep.path, ep.body)
				assert.Equal(t, http.StatusBadRequest, status, "body %s", b)
				var eb wire.ErrorBody
				require.NoError(t, json.Unmarshal(b, &eb), "body %s", b)
				assert.Equal(t, wire.CodeBadRequest, eb.Code)
				assert.True(t, strings.Contains(eb.Error, g.inAnswer), "message %q does not say %q", eb.Error, g.inAnswer)
				assert.Equal(t, fresh, e.state("fresh"), "a refused acquire changed the free lock")
				k.check(t)
			})
		}
	}
}
