// Package measure holds the pure parts of mpsync's benchmark harness: the
// line format that benchmark programs print and the harness parses, the
// monotonic clock they share, summaries of repeated trials, and a parser
// for the API server's Prometheus metrics. Nothing here starts processes or
// talks to a network, so its tests need no control plane.
package measure
