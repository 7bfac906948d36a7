package core

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"test", true},
		{"a", true},
		{"my-lock.v2", true},
		{"0abc", true},
		{strings.Repeat("a", 253), true},
		{"", false},
		{strings.Repeat("a", 254), false},
		{"Test", false},
		{"-a", false},
		{"a-", false},
		{"a..b", false},
		{"a/b", false},
		{"a b", false},
		{"ä", false},
		{"../x", false},
		{"a_b", false},
	}
	for _, tt := range tests {
		err := ValidateName(tt.name)
		if got := err == nil; got != tt.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, not ErrInvalidName", tt.name, err)
		}
	}
}

func TestValidity(t *testing.T) {
	tests := []struct {
		d, want time.Duration
	}{
		{15 * time.Second, 14700*time.Millisecond - Margin},
		{time.Second, 980*time.Millisecond - Margin},
		{100 * time.Millisecond, 0},
		{0, 0},
	}
	for _, tt := range tests {
		if got := Validity(tt.d); got != tt.want {
			t.Errorf("Validity(%v) = %v, want %v", tt.d, got, tt.want)
		}
	}
}
