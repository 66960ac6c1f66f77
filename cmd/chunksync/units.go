package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits are the suffixes parseSize accepts, all binary multiples, as
// rclone reads them: K, Ki, KiB and KB all mean 1024.
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10, "kb": 1 << 10,
	"m": 1 << 20, "mi": 1 << 20, "mib": 1 << 20, "mb": 1 << 20,
	"g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30, "gb": 1 << 30,
	"t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40, "tb": 1 << 40,
}

// parseSize reads a byte count such as "4096", "256K", "1.5M" or "2GiB".
// A bare number is bytes.
func parseSize(s string) (int64, error) {
	return parseScaled(s, 1)
}

// parseRate reads a bandwidth limit in rclone's form: "10M" is 10 MiB/s, a
// bare number is KiB/s, and "off" or 0 means no limit (returned as 0).
func parseRate(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "off" || t == "" {
		return 0, nil
	}
	if strings.ContainsAny(t, ":,") {
		return 0, fmt.Errorf("invalid rate %q: timetables and upload:download pairs are not supported; give one rate like 10M", s)
	}
	n, err := parseScaled(strings.TrimSuffix(t, "/s"), 1<<10)
	if err != nil {
		return 0, fmt.Errorf("invalid rate %q: want a number with an optional suffix B, K, M or G (binary multiples, bare number is KiB/s), like 10M, or off", s)
	}
	return n, nil
}

// parseScaled reads a non-negative number with an optional unit suffix;
// bare is the multiple of a number without one.
func parseScaled(s string, bare int64) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	mult, ok := sizeUnits[unit]
	if unit == "" {
		mult = bare
	}
	bad := fmt.Errorf("invalid size %q: want a number with an optional suffix B, K, M, G or T (binary multiples), like 256K or 1.5M", s)
	if !ok || num == "" {
		return 0, bad
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			return 0, bad
		}
		if n > math.MaxInt64/mult {
			return 0, fmt.Errorf("invalid size %q: too large", s)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, bad
	}
	v := f * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return int64(v), nil
}

// byteSize is a flag value holding a size in bytes, written as parseSize
// reads it.
type byteSize int64

// Set parses v for the flag package.
func (s *byteSize) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = byteSize(n)
	return nil
}

// String gives the size in bytes, the form flag help shows defaults in.
func (s *byteSize) String() string { return strconv.FormatInt(int64(*s), 10) }

// Type names the value in the flag help.
func (s *byteSize) Type() string { return "size" }

// rateLimit is a flag value holding a bandwidth limit in bytes per second,
// written as parseRate reads it; 0 is no limit.
type rateLimit int64

// Set parses v for the flag package.
func (r *rateLimit) Set(v string) error {
	n, err := parseRate(v)
	if err != nil {
		return err
	}
	*r = rateLimit(n)
	return nil
}

// String gives the limit in bytes per second, or "off".
func (r *rateLimit) String() string {
	if *r == 0 {
		return "off"
	}
	return strconv.FormatInt(int64(*r), 10) + "B"
}

// Type names the value in the flag help.
func (r *rateLimit) Type() string { return "rate" }
