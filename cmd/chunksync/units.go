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

// formatPercent gives a probability as a percentage, like "2%" or "0.5%".
func formatPercent(p float64) string {
	return strconv.FormatFloat(100*p, 'g', 3, 64) + "%"
}

// formatBitRate gives bits per second in decimal units, as network rates
// are written: "100 Mbit/s".
func formatBitRate(bps float64) string {
	for _, u := range []struct {
		name string
		size float64
	}{{"Gbit/s", 1e9}, {"Mbit/s", 1e6}, {"kbit/s", 1e3}} {
		if bps >= u.size {
			return fmt.Sprintf("%.4g %s", bps/u.size, u.name)
		}
	}
	return fmt.Sprintf("%.0f bit/s", bps)
}

// probability is a flag value holding a probability, written as a
// percentage ("2%") or a fraction ("0.02").
type probability float64

// parseProbability reads a percentage like "2%" or a fraction like "0.02".
func parseProbability(s string) (float64, error) {
	t := strings.TrimSpace(s)
	num, percent := strings.CutSuffix(t, "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("invalid probability %q: want a percentage like 2%% or a fraction like 0.02", s)
	}
	if percent {
		v /= 100
	}
	if v < 0 || v > 1 {
		if !percent && v > 1 && v <= 100 {
			return 0, fmt.Errorf("invalid probability %q: a bare number is a fraction between 0 and 1; write %s%% for a percentage", s, num)
		}
		return 0, fmt.Errorf("invalid probability %q: want 0%% to 100%%", s)
	}
	return v, nil
}

// Set parses v for the flag package.
func (p *probability) Set(v string) error {
	f, err := parseProbability(v)
	if err != nil {
		return err
	}
	*p = probability(f)
	return nil
}

// String gives the probability as a percentage; 0 stays "0" so that flag
// help does not show it as a default.
func (p *probability) String() string {
	if *p == 0 {
		return "0"
	}
	return formatPercent(float64(*p))
}

// Type names the value in the flag help.
func (p *probability) Type() string { return "prob" }

// bitUnits are the suffixes parseBitRate reads as bits per second, decimal
// as tc writes them; longest first, so that "mbit" is not read as "bit".
var bitUnits = []struct {
	suffix string
	mult   float64
}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}}

// parseBitRate reads a link rate in bits per second, written as tc writes
// it ("100mbit", "1.5gbit", "512kbit"), or in bytes per second as
// parseRate reads --bwlimit ("10M" is 10 MiB/s). "off" and 0 are no limit.
func parseBitRate(s string) (int64, error) {
	t := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "/s")
	for _, u := range bitUnits {
		if num, ok := strings.CutSuffix(t, u.suffix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err != nil || !(v >= 0) {
				break
			}
			if bps := v * u.mult; bps < math.MaxInt64/2 {
				return int64(bps), nil
			}
			return 0, fmt.Errorf("invalid rate %q: too large", s)
		}
	}
	n, err := parseRate(s)
	if err != nil {
		return 0, fmt.Errorf("invalid rate %q: want bits as tc writes them (100mbit, 1.5gbit, 512kbit), bytes per second as --bwlimit takes them (10M is 10 MiB/s), or off", s)
	}
	if n > math.MaxInt64/8 {
		return 0, fmt.Errorf("invalid rate %q: too large", s)
	}
	return n * 8, nil
}

// bitRate is a flag value holding a link rate in bits per second, written
// as parseBitRate reads it; 0 is no limit.
type bitRate int64

// Set parses v for the flag package.
func (r *bitRate) Set(v string) error {
	n, err := parseBitRate(v)
	if err != nil {
		return err
	}
	*r = bitRate(n)
	return nil
}

// String gives the rate as tc writes it, in the largest unit that holds
// it whole (200mbit, 1500kbit), or "off".
func (r *bitRate) String() string {
	if *r == 0 {
		return "off"
	}
	n, unit := int64(*r), "bit"
	for _, u := range []string{"kbit", "mbit", "gbit"} {
		if n%1000 != 0 {
			break
		}
		n, unit = n/1000, u
	}
	return strconv.FormatInt(n, 10) + unit
}

// Type names the value in the flag help.
func (r *bitRate) Type() string { return "rate" }
