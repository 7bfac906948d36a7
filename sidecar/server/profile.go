package server

import (
	"net/http"
	"net/http/pprof"
	"strings"
)

// serveProfile serves GET /debug/pprof/... with package net/http/pprof,
// when Config.Profiling is on: the index at /debug/pprof/, and under it
// cmdline, profile (CPU), symbol, trace and every runtime/pprof profile
// by name (heap, goroutine, allocs, ...). Their query parameters are
// net/http/pprof's (debug=1 for text, gc=1 to collect before a heap
// profile, seconds=N).
func serveProfile(w http.ResponseWriter, r *http.Request, _ string) {
	switch strings.TrimPrefix(r.URL.Path, "/debug/pprof/") {
	case "cmdline":
		pprof.Cmdline(w, r)
	case "profile":
		pprof.Profile(w, r)
	case "symbol":
		pprof.Symbol(w, r)
	case "trace":
		pprof.Trace(w, r)
	default:
		pprof.Index(w, r) // a named profile, or the index
	}
}
