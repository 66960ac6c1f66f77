//go:build linux

package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// runTUNLink creates a TUNLink and serves it until the end of the test.
// The link needs root; a test that cannot have it fails rather than skips,
// so that a CI machine without it is noticed.
func runTUNLink(tb testing.TB, cfg LinkConfig, opts ...TUNLinkOption) *TUNLink {
	tb.Helper()
	l, err := NewTUNLink(context.Background(), cfg, opts...)
	if err != nil {
		tb.Fatalf("%v (the IP-level link needs root and the kernel's TUN driver, /dev/net/tun)", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("tun link serve: %v", err)
		}
		if err := l.Close(); err != nil {
			tb.Errorf("tun link close: %v", err)
		}
	})
	return l
}

// udpIn opens a UDP socket in side's namespace: bound to the side's address
// when to is not valid, connected to to otherwise.
func udpIn(tb testing.TB, l *TUNLink, side Side, to netip.AddrPort) *net.UDPConn {
	tb.Helper()
	var c *net.UDPConn
	err := l.Do(side, func() error {
		var err error
		if to.IsValid() {
			c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
		} else {
			c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.Addr(side), 0)))
		}
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	setSocketBuffers(c)
	tb.Cleanup(func() { c.Close() })
	return c
}

// startEchoIn runs an echo server, as startEcho's, in side's namespace.
func startEchoIn(tb testing.TB, l *TUNLink, side Side) netip.AddrPort {
	tb.Helper()
	c := udpIn(tb, l, side, netip.AddrPort{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n >= probeHeader {
				binary.BigEndian.PutUint64(buf[probeEchoed:], uint64(stamp()))
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	tb.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// tunDeviceDrops is what the kernel dropped of the packets side's stack
// sent into its TUN device before the link read them: the device's
// transmit drops, which the link's statistics cannot see.
func tunDeviceDrops(tb testing.TB, l *TUNLink, side Side) uint64 {
	tb.Helper()
	var drops uint64
	err := l.Do(side, func() error {
		// /proc/thread-self/net is the calling thread's namespace,
		// /proc/net the process's.
		b, err := os.ReadFile("/proc/thread-self/net/dev")
		if err != nil {
			return err
		}
		for line := range strings.Lines(string(b)) {
			name, counters, ok := strings.Cut(line, ":")
			if !ok || strings.TrimSpace(name) != tunName {
				continue
			}
			// Eight receive counters, then transmit bytes, packets,
			// errors and drops.
			f := strings.Fields(counters)
			if len(f) < 12 {
				return fmt.Errorf("/proc/net/dev: %q", line)
			}
			_, err := fmt.Sscan(f[11], &drops)
			return err
		}
		return fmt.Errorf("/proc/net/dev has no %s", tunName)
	})
	if err != nil {
		tb.Fatal(err)
	}
	return drops
}

// TestTUNLinkAccuracy sends UDP probes from namespace A to an echo server
// in B and back: each direction delays and loses what it was asked to, and
// the kernel drops nothing out of the link's sight.
func TestTUNLinkAccuracy(t *testing.T) {
	ge, err := BurstLoss(0.05, 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		up, down LinkProfile
		o        probeOptions
	}{
		// One probe in flight: each sample is the link's delay and the
		// stacks'.
		{"delay", LinkProfile{Delay: 10 * time.Millisecond}, LinkProfile{Delay: 5 * time.Millisecond}, probeOptions{n: 60, window: 1}},
		{"loss", LinkProfile{Loss: 0.1}, LinkProfile{Loss: 0.05}, probeOptions{n: 5000, size: 100, window: 64}},
		{"burst", LinkProfile{Burst: ge}, LinkProfile{}, probeOptions{n: 8000, size: 100, window: 64}},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := runTUNLink(t, LinkConfig{Up: c.up, Down: c.down, Seed: 7})
			echo := startEchoIn(t, l, SideB)
			probe := udpIn(t, l, SideA, echo)
			run := sendProbes(t, probe, probe, c.o)
			up, down := l.Stats()
			t.Logf("A %s, B %s; up %+v; down %+v", l.Addr(SideA), l.Addr(SideB), up, down)
			for _, side := range []Side{SideA, SideB} {
				if d := tunDeviceDrops(t, l, side); d != 0 {
					t.Errorf("the kernel dropped %d packets that %s sent into its TUN device", d, side)
				}
			}
			if up.Failed != 0 || down.Failed != 0 || up.DroppedQueue != 0 || down.DroppedQueue != 0 {
				t.Errorf("failed or queue drops: up %+v, down %+v", up, down)
			}
			n := float64(c.o.n)
			switch c.name {
			case "delay":
				if len(run.arrivals) != c.o.n {
					t.Fatalf("%d of %d probes came back", len(run.arrivals), c.o.n)
				}
				var ups, downs []float64
				for _, a := range run.arrivals {
					ups = append(ups, float64(a.echoed-a.sent)/1e6)
					downs = append(downs, float64(a.at-a.echoed)/1e6)
				}
				t.Logf("one-way delays: up %.2f ms (trimmed mean; min %.2f), down %.2f ms (min %.2f)",
					trimmedMean(ups), slices.Min(ups), trimmedMean(downs), slices.Min(downs))
				// Never faster than asked, and no slower than the stacks
				// and the TUN devices make the fastest probe. The others
				// wait, besides, for the CPU on a loaded machine (tests
				// of other packages run beside these), by as much as
				// 10 ms a direction under the race detector: no bound
				// on them holds there.
				for _, d := range []struct {
					name string
					ms   []float64
					want float64
				}{{"up", ups, 10}, {"down", downs, 5}} {
					if lo := slices.Min(d.ms); lo < d.want || lo > d.want+1 {
						t.Errorf("shortest delay %s %.2f ms, want %.0f ms, up to 1 ms more", d.name, lo, d.want)
					}
				}
			case "loss":
				got := 1 - float64(distinct(run.arrivals))/n
				want := 1 - 0.9*0.95
				upRate := float64(up.DroppedLoss) / float64(up.Received)
				downRate := float64(down.DroppedLoss) / float64(down.Received)
				t.Logf("round-trip loss %.2f%% (want %.2f%%), up %.2f%%, down %.2f%%", 100*got, 100*want, 100*upRate, 100*downRate)
				if math.Abs(got-want) > 0.02 || math.Abs(upRate-0.1) > 0.02 || math.Abs(downRate-0.05) > 0.02 {
					t.Errorf("loss round trip %.3f, up %.3f, down %.3f: want %.3f, 0.1 and 0.05, ± 0.02", got, upRate, downRate, want)
				}
			case "burst":
				got := 1 - float64(distinct(run.arrivals))/n
				mb := meanInt(lossBursts(run.arrivals, c.o.n))
				t.Logf("burst loss %.2f%% in bursts of %.2f (want 5%% in bursts of 4)", 100*got, mb)
				if math.Abs(got-0.05) > 0.02 || mb < 3 || mb > 5 {
					t.Errorf("loss %.3f in bursts of %.2f: want 0.05 ± 0.02 in bursts of 4 ± 25%%", got, mb)
				}
			}
		})
	}
}

// TestTUNLinkCongestionRoute: WithCongestionControl reaches a connection
// whose sockets choose nothing, at both ends; without it they use the
// host's default.
func TestTUNLinkCongestionRoute(t *testing.T) {
	host, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	if err != nil {
		t.Fatal(err)
	}
	// Reno is built into every kernel; cubic is the usual default, so
	// that reno differs from it.
	for _, c := range []struct {
		opts []TUNLinkOption
		want string
	}{
		{[]TUNLinkOption{WithCongestionControl("reno")}, "reno"},
		{nil, strings.TrimSpace(string(host))},
	} {
		l := runTUNLink(t, LinkConfig{}, c.opts...)
		env := tcpTransferEnv{link: l}
		ln, err := env.listen(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var client net.Conn
		err = l.Do(SideA, func() error {
			var err error
			client, err = net.Dial("tcp4", ln.Addr().String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer server.Close()
		for _, s := range []*net.TCPConn{client.(*net.TCPConn), server} {
			if got, err := congestion(s); err != nil || got != c.want {
				t.Errorf("%s → %s: congestion control %q (%v), want %q", s.LocalAddr(), s.RemoteAddr(), got, err, c.want)
			}
		}
	}
	if _, err := NewTUNLink(t.Context(), LinkConfig{}, WithCongestionControl("no-such-algorithm")); err == nil {
		t.Error("a link with an unknown congestion control was made")
	}
}

// TestTUNLinkServeEnds: Serve returns on cancel with packets still waiting
// and on Close, runs once, and Do refuses a closed link.
func TestTUNLinkServeEnds(t *testing.T) {
	for _, how := range []string{"cancel", "close"} {
		t.Run(how, func(t *testing.T) {
			l, err := NewTUNLink(t.Context(), LinkConfig{Up: LinkProfile{Delay: time.Hour}})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- l.Serve(ctx) }()
			c := udpIn(t, l, SideA, netip.AddrPortFrom(l.Addr(SideB), 9))
			if _, err := c.Write([]byte("waits for an hour")); err != nil {
				t.Fatal(err)
			}
			if how == "cancel" {
				cancel()
			} else {
				l.Close()
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Serve: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return")
			}
			if err := l.Serve(context.Background()); err == nil {
				t.Error("a second Serve ran")
			}
			if err := l.Do(SideA, func() error { return nil }); !errors.Is(err, ErrTUNLinkClosed) {
				t.Errorf("Do on a closed link: %v, want ErrTUNLinkClosed", err)
			}
		})
	}
}

// TestTCPTransferThroughTUNLink sends a file over one TCP connection each
// way through 200 Mbit/s and 20 ms, without loss and with 1%, with each
// congestion control the kernel has. The goodputs it logs are TCP's share
// of the comparison with chunksync, on a file small enough for CI, whose
// transfer slow start dominates; BenchmarkTCPTransfer measures them.
func TestTCPTransferThroughTUNLink(t *testing.T) {
	const size = 1 << 20
	file := transferFile(t, size)
	have, err := TCPCongestionControls()
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"tcp", "tcp-bbr"} {
		if !slices.Contains(have, TCPToolCongestion(tool)) {
			t.Logf("%s: the kernel has no %s (it has %s)", tool, TCPToolCongestion(tool), strings.Join(have, " "))
			continue
		}
		for _, loss := range []float64{0, 0.01} {
			p := TransferProfile{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: loss}
			res, err := RunTCPTransfer(t.Context(), t.TempDir(), file, p, tool, true)
			if err != nil {
				t.Fatal(err)
			}
			if len(res) != 2 {
				t.Fatalf("%s over %s: %+v, want a push and a pull", tool, p, res)
			}
			for _, r := range res {
				t.Logf("%s %s over %s: %.2f s, %.1f Mbit/s, stream %d up, %d down, %d packets lost, %.2f CPU s",
					tool, r.Direction, p, r.Seconds, r.GoodputMbit, r.WireBytesSent, r.WireBytesReceived, r.DatagramsLost, r.CPUSeconds)
				if !r.Complete || r.Moved != size || r.Tool != tool || r.Profile != p.String() {
					t.Errorf("%s %s over %s: %+v", tool, r.Direction, p, r)
				}
				// The link's rate bounds the IP packets: payload, headers
				// and retransmissions.
				if r.GoodputMbit > 200 {
					t.Errorf("%s %s: %.1f Mbit/s through 200 Mbit/s", tool, r.Direction, r.GoodputMbit)
				}
				if stream := max(r.WireBytesSent, r.WireBytesReceived); stream != size {
					t.Errorf("%s %s: the stream carried %d bytes, want %d", tool, r.Direction, stream, size)
				}
				if loss > 0 && r.DatagramsLost == 0 {
					t.Errorf("%s %s: no packet lost at a loss of %v", tool, r.Direction, loss)
				}
			}
		}
	}
}

// TestTCPTransferRsync pushes and pulls with rsync through a lossy link.
func TestTCPTransferRsync(t *testing.T) {
	if _, err := exec.LookPath("rsync"); err != nil {
		t.Fatalf("rsync: %v (the TCP transfers compare with it: install rsync)", err)
	}
	const size = 1 << 20
	file := transferFile(t, size)
	p := TransferProfile{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: 0.01}
	res, err := RunTCPTransfer(t.Context(), t.TempDir(), file, p, "rsync", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 {
		t.Fatalf("%+v, want a push and a pull", res)
	}
	for _, r := range res {
		t.Logf("rsync %s over %s: %.2f s, %.1f Mbit/s, stream %d up, %d down, %d packets lost, %.2f CPU s",
			r.Direction, p, r.Seconds, r.GoodputMbit, r.WireBytesSent, r.WireBytesReceived, r.DatagramsLost, r.CPUSeconds)
		if !r.Complete || r.Moved != size || r.CPUSeconds <= 0 {
			t.Errorf("rsync %s: %+v", r.Direction, r)
		}
	}
	// A random file: it crosses the stream whole, each way once.
	if res[0].WireBytesSent < size || res[1].WireBytesReceived < size {
		t.Errorf("rsync push sent %d, pull received %d of a %d-byte random file", res[0].WireBytesSent, res[1].WireBytesReceived, size)
	}
}

// TestTCPTransferRefuses: unknown tools are an error, and a transfer that
// its context ends is an incomplete result, not a hang.
func TestTCPTransferRefuses(t *testing.T) {
	file := transferFile(t, 1<<20)
	if _, err := RunTCPTransfer(t.Context(), t.TempDir(), file, TransferProfile{}, "ftp", false); err == nil {
		t.Error("tool ftp ran")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	// 1 MiB at 1 Mbit/s takes 8 s.
	res, err := RunTCPTransfer(ctx, t.TempDir(), file, TransferProfile{Rate: 1e6, RTT: 2 * time.Millisecond}, "tcp", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Complete || res[0].Error == "" || res[0].Moved >= 1<<20 {
		t.Errorf("a transfer cut short: %+v", res)
	}
	t.Logf("cut short: %s", res[0].Error)
}

// tcpBenchSize is the file size of BenchmarkTCPTransfer: 64 MiB unless
// CHUNKSYNC_BENCH_SIZE says otherwise.
func tcpBenchSize(b *testing.B) int64 {
	s := os.Getenv("CHUNKSYNC_BENCH_SIZE")
	if s == "" {
		return 64 << 20
	}
	n, err := parseSize(s)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkTCPTransfer measures the TCP tools' goodput, push and pull,
// through 200 Mbit/s and 20 ms with 0%, 1% and 5% random loss and 5% in
// bursts of 4, on a random file. Run i seeds the link with i+1, and the
// goodputs reported are the means over the runs. With CUBIC, lossy runs
// take minutes:
//
//	go test -run '^$' -bench TCPTransfer -benchtime 1x -timeout 3h ./bench/
func BenchmarkTCPTransfer(b *testing.B) {
	size := tcpBenchSize(b)
	file := filepath.Join(b.TempDir(), "random.bin")
	if err := WriteRandomFile(file, size, 1); err != nil {
		b.Fatal(err)
	}
	have, err := TCPCongestionControls()
	if err != nil {
		b.Fatal(err)
	}
	for _, p := range []TransferProfile{
		{Rate: 200e6, RTT: 20 * time.Millisecond},
		{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: 0.01},
		{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: 0.05},
		{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: 0.05, Burst: 4},
	} {
		for _, tool := range TCPTools {
			if !slices.Contains(have, TCPToolCongestion(tool)) {
				continue
			}
			b.Run(strings.ReplaceAll(p.String(), " ", "_")+"/"+tool, func(b *testing.B) {
				sums := map[string]float64{}
				for i := range b.N {
					res, err := RunTCPTransfer(b.Context(), b.TempDir(), file, p, tool, true, WithTCPTransferSeed(uint64(i+1)))
					if err != nil {
						b.Fatal(err)
					}
					for _, r := range res {
						if !r.Complete {
							b.Fatalf("%s %s: %s", tool, r.Direction, r.Error)
						}
						sums[r.Direction+"-Mbit/s"] += r.GoodputMbit
						sums[r.Direction+"-lost"] += float64(r.DatagramsLost)
					}
				}
				for unit, sum := range sums {
					b.ReportMetric(sum/float64(b.N), unit)
				}
			})
		}
	}
}
