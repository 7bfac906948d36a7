package mpsynctest_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mpsync/mpsync"
	"github.com/mpsync/mpsync/drivertest"
	"github.com/mpsync/mpsync/mpsynctest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type harness struct{ f *mpsynctest.Elector }

func (h harness) Transport(*testing.T) mpsync.Transport { return h.f.Transport() }

func (h harness) Revoke(t *testing.T, name string) {
	if !h.f.Revoke(name) {
		t.Fatalf("Revoke(%q): nobody held it", name)
	}
}

func TestConformance(t *testing.T) {
	f := mpsynctest.NewElector()
	defer f.Close()
	drivertest.RunConformanceTests(t, harness{f})
}

// TestInvalidIdentity: the fake refuses the identities the elector refuses,
// with the SDK's error value, so that users' unit tests catch them too.
func TestInvalidIdentity(t *testing.T) {
	f := mpsynctest.NewElector()
	defer f.Close()
	tests := []struct {
		name, id string
	}{
		{"empty", ""},
		{"tab", "web\t1"},
		{"newline", "web-1\n"},
		{"NUL", "web\x00"},
		{"invalid UTF-8", "web\xff"},
		{"too long", strings.Repeat("a", 254)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.Transport().Acquire(context.Background(), "test", tt.id, false)
			require.ErrorIs(t, err, mpsync.ErrInvalidIdentity)
			_, held := f.Holder("test")
			require.False(t, held, "the lock was taken for identity %q", tt.id)
		})
	}
}
