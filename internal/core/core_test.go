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

func TestValidateIdentity(t *testing.T) {
	tests := []struct {
		name string
		id   string
		ok   bool
	}{
		{"plain", "web-1", true},
		{"host and pid", "web-7f9c-1234", true},
		{"spaces and punctuation", "web 1 (canary) @eu#2", true},
		{"non-ASCII", "wébé-北京", true},
		{"longest", strings.Repeat("a", MaxIdentityLength), true},
		{"longest in multibyte runes", strings.Repeat("é", MaxIdentityLength/2), true},
		{"empty", "", false},
		{"one byte too long", strings.Repeat("a", MaxIdentityLength+1), false},
		{"too long in bytes, not runes", strings.Repeat("é", MaxIdentityLength/2+1), false},
		{"tab", "web\t1", false},
		{"newline", "web-1\n", false},
		{"carriage return", "web\r1", false},
		{"NUL", "web\x001", false},
		{"escape", "web\x1b[31m", false},
		{"DEL", "web\x7f", false},
		{"C1 control", "web\u00851", false},
		{"invalid UTF-8", "web\xff", false},
		{"truncated rune", "web\xc3", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateIdentity(tt.id)
			if tt.ok && err != nil {
				t.Errorf("ValidateIdentity(%q) = %v, want nil", tt.id, err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidIdentity) {
				t.Errorf("ValidateIdentity(%q) = %v, want ErrInvalidIdentity", tt.id, err)
			}
		})
	}
}
