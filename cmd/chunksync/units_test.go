package main

import (
	"math"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"0", 0, false},
		{"4096", 4096, false},
		{"100B", 100, false},
		{"256K", 256 << 10, false},
		{"256k", 256 << 10, false},
		{"256KiB", 256 << 10, false},
		{"256KB", 256 << 10, false},
		{"1M", 1 << 20, false},
		{"1.5M", 3 << 19, false},
		{"256MiB", 256 << 20, false},
		{" 2 G ", 2 << 30, false},
		{"1T", 1 << 40, false},
		{"", 0, true},
		{"M", 0, true},
		{"-1", 0, true},
		{"1X", 0, true},
		{"1.2.3M", 0, true},
		{"99999999999T", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSize(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseSize(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"off", 0, false},
		{"OFF", 0, false},
		{"0", 0, false},
		{"10M", 10 << 20, false},
		{"10m", 10 << 20, false},
		{"10MiB", 10 << 20, false},
		{"10M/s", 10 << 20, false},
		{"512", 512 << 10, false}, // rclone: a bare number is KiB/s
		{"512K", 512 << 10, false},
		{"100B", 100, false},
		{"1G", 1 << 30, false},
		{"2.5M", 5 << 19, false},
		{"fast", 0, true},
		{"10M:1M", 0, true},
		{"08:00,512k", 0, true},
		{"-5M", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseRate(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseRate(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// TestPushFlagParsing parses push's own flag set, as cobra does.
func TestPushFlagParsing(t *testing.T) {
	tests := []struct {
		args          []string
		bwlimit       rateLimit
		min, avg, max byteSize
		wantErr       string
	}{
		{args: nil, bwlimit: 0},
		{args: []string{"--bwlimit", "10M"}, bwlimit: 10 << 20},
		{args: []string{"--bwlimit=off"}, bwlimit: 0},
		{args: []string{"--bwlimit", "64"}, bwlimit: 64 << 10},
		{args: []string{"--min", "256K", "--avg", "1M", "--max", "4MiB"}, min: 256 << 10, avg: 1 << 20, max: 4 << 20},
		{args: []string{"--avg=1.5M"}, avg: 3 << 19},
		{args: []string{"--bwlimit", "10M:1M"}, wantErr: "not supported"},
		{args: []string{"--max", "big"}, wantErr: "invalid size"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := newPushCommand()
			err := cmd.ParseFlags(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseFlags(%q) = %v, want an error containing %q", tt.args, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			f := cmd.Flags()
			if got := *f.Lookup("bwlimit").Value.(*rateLimit); got != tt.bwlimit {
				t.Errorf("bwlimit = %d, want %d", got, tt.bwlimit)
			}
			for name, want := range map[string]byteSize{"min": tt.min, "avg": tt.avg, "max": tt.max} {
				if got := *f.Lookup(name).Value.(*byteSize); got != want {
					t.Errorf("%s = %d, want %d", name, got, want)
				}
			}
		})
	}
}

func TestChunkerParams(t *testing.T) {
	tests := []struct {
		name          string
		opts          pushOptions
		min, avg, max uint32
		wantErr       bool
	}{
		{name: "fixed defaults", opts: pushOptions{Chunker: "fixed"}, min: 1 << 20, avg: 1 << 20, max: 1 << 20},
		{name: "fixed avg sets all", opts: pushOptions{Chunker: "fixed", Avg: 256 << 10}, min: 256 << 10, avg: 256 << 10, max: 256 << 10},
		{name: "fixed max sets all", opts: pushOptions{Chunker: "fixed", Max: 64 << 10}, min: 64 << 10, avg: 64 << 10, max: 64 << 10},
		{name: "fixed conflicting sizes", opts: pushOptions{Chunker: "fixed", Min: 1 << 10, Avg: 2 << 10}, wantErr: true},
		{name: "too large", opts: pushOptions{Chunker: "fixed", Avg: 1 << 30}, wantErr: true},
		{name: "unknown", opts: pushOptions{Chunker: "nope"}, wantErr: true},
		{name: "default chunker overrides each", opts: pushOptions{Chunker: "rabin", Min: 128 << 10, Avg: 512 << 10, Max: 4 << 20}, min: 128 << 10, avg: 512 << 10, max: 4 << 20},
		{name: "default chunker min above avg", opts: pushOptions{Chunker: "rabin", Min: 1 << 20, Avg: 64 << 10}, wantErr: true},
		{name: "default chunker refuses its own limits", opts: pushOptions{Chunker: "rabin", Avg: 300 << 10}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.opts.chunkerParams()
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %s, want an error", p)
				}
				if _, ok := err.(usageError); !ok {
					t.Errorf("error %v is a %T, want a usageError", err, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Min != tt.min || p.Avg != tt.avg || p.Max != tt.max {
				t.Errorf("got %s, want min=%d avg=%d max=%d", p, tt.min, tt.avg, tt.max)
			}
		})
	}
}

func TestParseProbability(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr bool
	}{
		{"0", 0, false},
		{"2%", 0.02, false},
		{" 0.5 % ", 0.005, false},
		{"0.02", 0.02, false},
		{"1", 1, false},
		{"100%", 1, false},
		{"2", 0, true}, // a fraction above 1: 2% was meant
		{"101%", 0, true},
		{"-1%", 0, true},
		{"", 0, true},
		{"%", 0, true},
		{"NaN", 0, true},
		{"lots", 0, true},
	}
	for _, tt := range tests {
		got, err := parseProbability(tt.in)
		if (err != nil) != tt.wantErr || math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("parseProbability(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseBitRate(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"off", 0, false},
		{"0", 0, false},
		{"100mbit", 100e6, false},
		{"100Mbit/s", 100e6, false},
		{"1.5gbit", 1.5e9, false},
		{"512kbit", 512e3, false},
		{"64000bit", 64000, false},
		{"10M", 8 * 10 << 20, false}, // bytes, as --bwlimit
		{"512", 8 * 512 << 10, false},
		{"10mbps", 0, true}, // tc reads mbps as megabytes: refuse the ambiguity
		{"fast", 0, true},
		{"-1mbit", 0, true},
		{"1e30gbit", 0, true},
	}
	for _, tt := range tests {
		got, err := parseBitRate(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseBitRate(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestBitRateString: a rate prints as tc writes it, in the largest unit
// that holds it whole, and reads back as itself.
func TestBitRateString(t *testing.T) {
	for _, tt := range []struct {
		bps  int64
		want string
	}{
		{0, "off"},
		{200e6, "200mbit"},
		{1e9, "1gbit"},
		{1.5e9, "1500mbit"},
		{512e3, "512kbit"},
		{64001, "64001bit"},
	} {
		r := bitRate(tt.bps)
		got := r.String()
		if got != tt.want {
			t.Errorf("bitRate(%d) = %q, want %q", tt.bps, got, tt.want)
		}
		if back, err := parseBitRate(got); err != nil || back != tt.bps {
			t.Errorf("parseBitRate(%q) = %d, %v; want %d", got, back, err, tt.bps)
		}
	}
}
