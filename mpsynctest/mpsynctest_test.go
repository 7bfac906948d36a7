package mpsynctest_test

import (
	"testing"

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
