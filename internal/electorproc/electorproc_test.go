package electorproc

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLogSinkFindsServingAcrossWrites(t *testing.T) {
	l := &logSink{serving: make(chan string, 1)}
	for _, part := range []string{
		`{"level":"info","msg":"memory backend"}` + "\n" + `{"level":"info","msg":"serv`,
		`ing","addr":"127.0.0.1:4`,
		`2424"}` + "\n" + `{"level":"info","msg":"serving","addr":"127.0.0.1:1"}` + "\n",
	} {
		if n, err := l.Write([]byte(part)); n != len(part) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	select {
	case addr := <-l.serving:
		if addr != "127.0.0.1:42424" {
			t.Fatalf("serving address %q, want the first serving line's 127.0.0.1:42424", addr)
		}
	default:
		t.Fatal("no serving address found")
	}
	select {
	case addr := <-l.serving:
		t.Fatalf("a second serving address %q; want only the first", addr)
	default:
	}
}

func TestServingAddrGarbage(t *testing.T) {
	for _, line := range []string{
		"", "serving", `{"msg":"serving"}`, `{"msg":"serving","addr":""}`,
		`{"msg":"listening","addr":"127.0.0.1:1"}`, `{"msg":"serving","addr":`, `[1,2]`,
	} {
		if addr, ok := servingAddr(line); ok {
			t.Errorf("servingAddr(%q) = %q, true; want false", line, addr)
		}
	}
}

func TestStartFailsClearly(t *testing.T) {
	if _, err := Start("/nonexistent/elector", 0); err == nil {
		t.Fatal("Start of a missing binary succeeded")
	}
	// A program that exits at once never serves.
	_, err := Start("/bin/false", 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "exited before serving") {
		t.Fatalf("Start of /bin/false = %v, want an error saying it exited before serving", err)
	}
}
