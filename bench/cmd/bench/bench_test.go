package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestReadEnv(t *testing.T) {
	path := filepath.Join(t.TempDir(), "env")
	text := "# comment\nMPSYNC_KUBE_SERVER=https://127.0.0.1:6443\n\nMPSYNC_ADMIN_TOKEN=abc=def\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	env, err := readEnv(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := env["MPSYNC_KUBE_SERVER"], "https://127.0.0.1:6443"; got != want {
		t.Errorf("MPSYNC_KUBE_SERVER = %q, want %q", got, want)
	}
	if got, want := env["MPSYNC_ADMIN_TOKEN"], "abc=def"; got != want {
		t.Errorf("MPSYNC_ADMIN_TOKEN = %q, want %q", got, want)
	}
	if err := os.WriteFile(path, []byte("no equals sign\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readEnv(path); err == nil {
		t.Error("readEnv of a line without '=' succeeded, want an error")
	}
}

func TestLoadArithmetic(t *testing.T) {
	quiet := []window{
		{perMin: map[string]float64{"PUT": 6}},
		{perMin: map[string]float64{"PUT": 5}},
		{perMin: map[string]float64{"PUT": 7, "GET": 0}, watches: 1},
	}
	load := []window{
		{perMin: map[string]float64{"PUT": 36, "GET": 40}, watches: 4},
		{perMin: map[string]float64{"PUT": 30, "GET": 46}, watches: 1},
	}
	if got, want := totals(load, quiet), []float64{70, 70}; !slices.Equal(got, want) {
		t.Errorf("totals = %v, want %v", got, want)
	}
	if got, want := totals(quiet, nil), []float64{6, 5, 7}; !slices.Equal(got, want) {
		t.Errorf("totals without a baseline = %v, want %v", got, want)
	}
	if got, want := byVerb(load, quiet, "PUT"), []float64{30, 24}; !slices.Equal(got, want) {
		t.Errorf("byVerb PUT = %v, want %v", got, want)
	}
	if got, want := watches(load, quiet), []float64{4, 1}; !slices.Equal(got, want) {
		t.Errorf("watches = %v, want %v", got, want)
	}
	if got, want := verbs(quiet, load), []string{"GET", "PUT"}; !slices.Equal(got, want) {
		t.Errorf("verbs = %v, want %v", got, want)
	}
	if got, want := verbs(quiet), []string{"PUT"}; !slices.Equal(got, want) {
		t.Errorf("verbs of quiet = %v, want %v (GET is all zeros)", got, want)
	}
}
