package measure

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ClockTicks is Linux's USER_HZ, the unit of the CPU times in
// /proc/PID/stat: 100 on every architecture Go supports on Linux.
const ClockTicks = 100

// Usage is what a process has used so far, from /proc.
type Usage struct {
	// RSS is its resident memory now, in bytes (VmRSS).
	RSS int64
	// CPU is the CPU time it has used, user and system, since it started.
	CPU time.Duration
}

// ReadUsage reads the Usage of process pid from /proc.
func ReadUsage(pid int) (Usage, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Usage{}, err
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Usage{}, err
	}
	return parseUsage(string(stat), string(status))
}

// parseUsage reads utime and stime from the contents of /proc/PID/stat and
// VmRSS from those of /proc/PID/status.
func parseUsage(stat, status string) (Usage, error) {
	var u Usage
	// The command name, field 2, is in parentheses and may hold spaces:
	// count fields from the last ')'.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return Usage{}, errors.New("measure: /proc/PID/stat without ')'")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return Usage{}, fmt.Errorf("measure: /proc/PID/stat has %d fields after the name, want at least 13", len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return Usage{}, fmt.Errorf("measure: /proc/PID/stat: bad utime %q or stime %q", f[11], f[12])
	}
	u.CPU = time.Duration(ut+st) * time.Second / ClockTicks
	for line := range strings.Lines(status) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != "VmRSS" {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return Usage{}, fmt.Errorf("measure: /proc/PID/status: bad VmRSS %q", strings.TrimSpace(v))
		}
		u.RSS = kb << 10
		return u, nil
	}
	return Usage{}, errors.New("measure: /proc/PID/status has no VmRSS (a zombie?)")
}
