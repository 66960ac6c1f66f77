package main

import (
	"context"
	"math"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/chunksync/chunksync/bench"
)

// linkConfigOf parses args as bench link's flags and returns the link's
// configuration.
func linkConfigOf(t *testing.T, args ...string) (bench.LinkConfig, error) {
	t.Helper()
	var opts benchLinkOptions
	f := pflag.NewFlagSet("link", pflag.ContinueOnError)
	opts.addFlags(f)
	if err := f.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return opts.config(f)
}

func TestBenchLinkFlags(t *testing.T) {
	cfg, err := linkConfigOf(t, "--loss", "2%", "--delay", "20ms", "--jitter", "2ms", "--rate", "100mbit", "--queue", "256KiB",
		"--reorder", "1%", "--reorder-delay", "3ms", "--duplicate", "0.005", "--seed", "7")
	if err != nil {
		t.Fatal(err)
	}
	want := bench.LinkProfile{Loss: 0.02, Delay: 20 * time.Millisecond, Jitter: 2 * time.Millisecond, Rate: 100e6, Queue: 256 << 10,
		Reorder: 0.01, ReorderDelay: 3 * time.Millisecond, Duplicate: 0.005}
	if cfg.Up != want || cfg.Down != want || cfg.Seed != 7 {
		t.Errorf("config %+v, want both directions %+v and seed 7", cfg, want)
	}

	cfg, err = linkConfigOf(t, "--up-loss", "5%", "--loss", "0.02", "--down-delay", "30ms", "--up-rate", "10M")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Up.Loss != 0.05 || cfg.Down.Loss != 0.02 {
		t.Errorf("loss up %v down %v: --up-loss wins over --loss whatever the order", cfg.Up.Loss, cfg.Down.Loss)
	}
	if cfg.Up.Delay != 0 || cfg.Down.Delay != 30*time.Millisecond || cfg.Up.Rate != 8*10<<20 || cfg.Down.Rate != 0 {
		t.Errorf("config %+v: direction flags leak into the other direction", cfg)
	}

	cfg, err = linkConfigOf(t, "--loss", "2%", "--burst", "5", "--down-loss", "0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Up.Burst == nil || cfg.Up.Loss != 0 || math.Abs(cfg.Up.Burst.MeanLoss()-0.02) > 1e-12 || math.Abs(1/cfg.Up.Burst.BadToGood-5) > 1e-9 {
		t.Errorf("up %+v (burst %+v): --burst 5 makes 2%% loss bursty at the same average", cfg.Up, cfg.Up.Burst)
	}
	if cfg.Down.Burst != nil || cfg.Down.Loss != 0 {
		t.Errorf("down %+v: no loss asked", cfg.Down)
	}
}

func TestBenchLinkUsageErrors(t *testing.T) {
	addr := []string{"--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9"}
	tests := []struct {
		name string
		args []string
	}{
		{"no listen", []string{"--upstream", "127.0.0.1:9"}},
		{"no upstream", []string{"--listen", "127.0.0.1:0"}},
		{"argument", append(append([]string{}, addr...), "extra")},
		{"loss above 100%", append(append([]string{}, addr...), "--loss", "150%")},
		{"loss as a bare percentage", append(append([]string{}, addr...), "--loss", "2")},
		{"bad rate", append(append([]string{}, addr...), "--rate", "fast")},
		{"bad delay", append(append([]string{}, addr...), "--up-delay", "soon")},
		{"bad queue", append(append([]string{}, addr...), "--queue", "big")},
		{"jitter above delay", append(append([]string{}, addr...), "--delay", "1ms", "--jitter", "2ms")},
		{"short burst", append(append([]string{}, addr...), "--loss", "1%", "--burst", "0.5")},
		{"impossible burst", append(append([]string{}, addr...), "--loss", "60%", "--down-burst", "1")},
		{"queue without rate", append(append([]string{}, addr...), "--queue", "64KiB")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, append([]string{"bench", "link"}, tt.args...)...)
			if r.code != exitUsage {
				t.Fatalf("exit %d, want %d\nstderr: %s", r.code, exitUsage, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "chunksync: ") || !strings.Contains(r.stderr, "--help") {
				t.Errorf("stderr %q: want a 'chunksync: ' message and a pointer to --help", r.stderr)
			}
		})
	}
}

// notifyBuffer is a syncBuffer that signals every write, so that a test
// waits for output rather than polling for it.
type notifyBuffer struct {
	syncBuffer
	wrote chan struct{}
}

func newNotifyBuffer() *notifyBuffer { return &notifyBuffer{wrote: make(chan struct{}, 1)} }

func (b *notifyBuffer) Write(p []byte) (int, error) {
	n, err := b.syncBuffer.Write(p)
	select {
	case b.wrote <- struct{}{}:
	default:
	}
	return n, err
}

// waitFor waits until re matches what b holds and returns the match; it
// fails if the command ends first (done) or nothing matches in 10 s.
func (b *notifyBuffer) waitFor(t *testing.T, re *regexp.Regexp, done <-chan int) []string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		if m := re.FindStringSubmatch(b.String()); m != nil {
			return m
		}
		select {
		case <-b.wrote:
		case code := <-done:
			t.Fatalf("command exited %d; output: %s", code, b.String())
		case <-timeout:
			t.Fatalf("no %q in 10 s; output: %s", re, b.String())
		}
	}
}

var linkBanner = regexp.MustCompile(`link listening on (\S+), relaying to`)

// TestBenchLinkRelays runs the command against an echo server: every
// datagram comes back twice (--down-duplicate 100%), the periodic line
// counts them, and a cancel stops the command with a JSON summary.
func TestBenchLinkRelays(t *testing.T) {
	echo, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	echoDone := make(chan struct{})
	go func() {
		defer close(echoDone)
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			echo.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	defer func() { echo.Close(); <-echoDone }()

	for _, asJSON := range []bool{true, false} {
		name := "summary"
		if asJSON {
			name = "json"
		}
		t.Run(name, func(t *testing.T) {
			args := []string{"bench", "link", "--listen", "127.0.0.1:0", "--upstream", echo.LocalAddr().String(),
				"--delay", "1ms", "--down-duplicate", "100%", "--seed", "3", "--stats-every", "20ms"}
			if asJSON {
				args = append(args, "--json")
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			out, errOut := newNotifyBuffer(), newNotifyBuffer()
			done := make(chan int, 1)
			go func() { done <- execute(ctx, args, ioStreams{Out: out, Err: errOut}) }()
			addr := errOut.waitFor(t, linkBanner, done)[1]

			c, err := net.Dial("udp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			const n = 50
			buf := make([]byte, 64)
			for i := range n {
				if _, err := c.Write([]byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
				for range 2 {
					if k, err := c.Read(buf); err != nil || k != 1 || buf[0] != byte(i) {
						t.Fatalf("datagram %d: read %d bytes %v, %v", i, k, buf[:k], err)
					}
				}
			}
			errOut.waitFor(t, regexp.MustCompile(`up: 50 in, 50 out, .* \| down: 50 in, 100 out, .*duplicated 50`), done)

			cancel()
			if code := <-done; code != exitOK {
				t.Fatalf("exit %d after cancel; stderr: %s", code, errOut.String())
			}
			if !asJSON {
				for _, want := range []string{"link " + addr + " -> ", "RECEIVED", "up    50 (50 B)", "down  50 (50 B)  100 (100 B)"} {
					if !strings.Contains(out.String(), want) {
						t.Errorf("summary lacks %q:\n%s", want, out.String())
					}
				}
				return
			}
			v := decodeJSON(t, out.String())
			up, _ := v["up"].(map[string]any)
			down, _ := v["down"].(map[string]any)
			if v["listen"] != addr || number(t, v, "seed") != 3 {
				t.Errorf("summary %v: want listen %s and seed 3", v, addr)
			}
			for _, c := range []struct {
				dir   map[string]any
				field string
				want  float64
			}{
				{up, "received", n}, {up, "delivered", n}, {up, "duplicated", 0},
				{down, "received", n}, {down, "delivered", 2 * n}, {down, "duplicated", n}, {down, "delivered_bytes", 2 * n},
			} {
				if got := number(t, c.dir, c.field); got != c.want {
					t.Errorf("%s = %v, want %v; summary %v", c.field, got, c.want, v)
				}
			}
		})
	}
}

func TestBenchLinkBusyAddress(t *testing.T) {
	busy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	r := run(t, "bench", "link", "--listen", busy.LocalAddr().String(), "--upstream", "127.0.0.1:9")
	if r.code != exitError || !strings.Contains(r.stderr, busy.LocalAddr().String()) {
		t.Errorf("link on a busy address: exit %d, stderr %q", r.code, r.stderr)
	}
}
