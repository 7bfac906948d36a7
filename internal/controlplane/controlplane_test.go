package controlplane

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadEnv(t *testing.T) {
	path := filepath.Join(t.TempDir(), "env")
	text := "# comment\nMPSYNC_KUBE_SERVER=https://127.0.0.1:6443\n\nMPSYNC_ADMIN_TOKEN=abc=def\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	env, err := ReadEnv(path)
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
	if _, err := ReadEnv(path); err == nil {
		t.Error("ReadEnv of a line without '=' succeeded, want an error")
	}
}
