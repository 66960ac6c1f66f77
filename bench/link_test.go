package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// testEpoch is the clock of the probes' timestamps: the sender and the
// receiver run in the same process, so one-way delays are differences of
// the same monotonic clock.
var testEpoch = time.Now()

func stamp() int64 { return int64(time.Since(testEpoch)) }

// Probe datagrams carry their sequence number, the time they were sent
// and, through an echo server, the time the server saw them.
const (
	probeSeq    = 0
	probeSent   = 8
	probeEchoed = 16
	probeHeader = 24
)

// runLink starts a link from an ephemeral port on 127.0.0.1 to upstream,
// serving until the end of the test.
func runLink(tb testing.TB, upstream string, cfg LinkConfig) *Link {
	tb.Helper()
	l, err := ListenLink("127.0.0.1:0", upstream, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("link serve: %v", err)
		}
	})
	return l
}

// listenUDP opens a socket on an ephemeral port of 127.0.0.1.
func listenUDP(tb testing.TB) *net.UDPConn {
	tb.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	setSocketBuffers(c)
	tb.Cleanup(func() { c.Close() })
	return c
}

// dialUDP opens a socket connected to addr.
func dialUDP(tb testing.TB, addr net.Addr) *net.UDPConn {
	tb.Helper()
	c, err := net.DialUDP("udp", nil, addr.(*net.UDPAddr))
	if err != nil {
		tb.Fatal(err)
	}
	setSocketBuffers(c)
	tb.Cleanup(func() { c.Close() })
	return c
}

// echoServer sends every datagram back to its sender with the time it
// arrived, and remembers the senders.
type echoServer struct {
	conn  *net.UDPConn
	mu    sync.Mutex
	peers map[netip.AddrPort]int
}

func startEcho(tb testing.TB) *echoServer {
	tb.Helper()
	e := &echoServer{conn: listenUDP(tb), peers: make(map[netip.AddrPort]int)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := e.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n >= probeHeader {
				binary.BigEndian.PutUint64(buf[probeEchoed:], uint64(stamp()))
			}
			e.mu.Lock()
			e.peers[from]++
			e.mu.Unlock()
			e.conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	tb.Cleanup(func() { e.conn.Close(); <-done })
	return e
}

func (e *echoServer) addr() string { return e.conn.LocalAddr().String() }

// arrival is one probe datagram as its receiver saw it; times are from
// stamp.
type arrival struct {
	seq              uint64
	sent, echoed, at int64
	size             int
}

// probeOptions describe a run of sendProbes.
type probeOptions struct {
	// n datagrams of size bytes are measured; window bounds how far the
	// sender runs ahead of the highest sequence number received.
	n, size, window int
	// all makes the receiver wait for every measured datagram, for
	// lossless runs that reorder.
	all bool
}

// probeRun is what sendProbes measured.
type probeRun struct {
	// arrivals are the measured datagrams in arrival order, duplicates
	// included.
	arrivals []arrival
	// sending is how long the sender took to send the measured datagrams.
	sending time.Duration
}

// sendProbes sends numbered datagrams on send and reads them back on recv
// (through an echo server when send and recv are the same socket). After
// the o.n measured datagrams it sends flush datagrams, numbered from o.n,
// until one arrives: a direction that does not reorder delivers in order,
// so by then every measured datagram has been delivered or dropped. The
// window, counted from the highest number received, keeps the sender from
// overflowing socket buffers, and makes the run wait on arrivals rather
// than on a clock.
func sendProbes(t *testing.T, send, recv *net.UDPConn, o probeOptions) probeRun {
	t.Helper()
	if o.size < probeHeader {
		o.size = probeHeader
	}
	var highest atomic.Int64
	highest.Store(-1)
	progress := make(chan struct{}, 1)
	finished := make(chan struct{})
	var arrivals []arrival
	var recvErr error
	// A run that stalls fails instead of hanging.
	recv.SetReadDeadline(time.Now().Add(30 * time.Second))
	go func() {
		defer close(finished)
		buf := make([]byte, maxDatagram)
		seen := make([]bool, o.n)
		distinct, flushed := 0, false
		for {
			k, err := recv.Read(buf)
			if err != nil {
				recvErr = err
				return
			}
			now := stamp()
			if k < probeHeader {
				continue
			}
			seq := binary.BigEndian.Uint64(buf[probeSeq:])
			if int64(seq) > highest.Load() {
				highest.Store(int64(seq))
				select {
				case progress <- struct{}{}:
				default:
				}
			}
			if seq >= uint64(o.n) {
				flushed = true
			} else {
				arrivals = append(arrivals, arrival{
					seq:    seq,
					sent:   int64(binary.BigEndian.Uint64(buf[probeSent:])),
					echoed: int64(binary.BigEndian.Uint64(buf[probeEchoed:])),
					at:     now,
					size:   k,
				})
				if !seen[seq] {
					seen[seq] = true
					distinct++
				}
			}
			if flushed && (!o.all || distinct == o.n) {
				return
			}
		}
	}()
	defer func() {
		recv.SetReadDeadline(time.Now())
		<-finished
		recv.SetReadDeadline(time.Time{})
	}()

	pkt := make([]byte, o.size)
	start := time.Now()
	var run probeRun
send:
	for seq := 0; ; seq++ {
		for int64(seq)-highest.Load() > int64(o.window) {
			select {
			case <-progress:
			case <-finished:
				break send
			}
		}
		select {
		case <-finished:
			break send
		default:
		}
		binary.BigEndian.PutUint64(pkt[probeSeq:], uint64(seq))
		binary.BigEndian.PutUint64(pkt[probeSent:], uint64(stamp()))
		if _, err := send.Write(pkt); err != nil {
			t.Fatalf("send probe %d: %v", seq, err)
		}
		if seq == o.n-1 {
			run.sending = time.Since(start)
		}
	}
	<-finished
	if recvErr != nil {
		t.Fatalf("receive probes: %v (the run stalled)", recvErr)
	}
	run.arrivals = arrivals
	return run
}

// oneWay sends probes through a new link with profile up to a sink.
func oneWay(t *testing.T, up LinkProfile, seed uint64, o probeOptions) (probeRun, LinkStats) {
	t.Helper()
	sink := listenUDP(t)
	l := runLink(t, sink.LocalAddr().String(), LinkConfig{Up: up, Seed: seed})
	run := sendProbes(t, dialUDP(t, l.Addr()), sink, o)
	st, _ := l.Stats()
	return run, st
}

// distinct counts the different sequence numbers among arrivals.
func distinct(arrivals []arrival) int {
	seen := make(map[uint64]bool, len(arrivals))
	for _, a := range arrivals {
		seen[a.seq] = true
	}
	return len(seen)
}

// lossBursts returns the lengths of the runs of consecutive sequence
// numbers below n that never arrived.
func lossBursts(arrivals []arrival, n int) []int {
	got := make([]bool, n)
	for _, a := range arrivals {
		got[a.seq] = true
	}
	var bursts []int
	run := 0
	for _, ok := range append(got, true) {
		if !ok {
			run++
		} else if run > 0 {
			bursts = append(bursts, run)
			run = 0
		}
	}
	return bursts
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func stddev(xs []float64) float64 {
	m := mean(xs)
	var s float64
	for _, x := range xs {
		s += (x - m) * (x - m)
	}
	return math.Sqrt(s / float64(len(xs)-1))
}

// quantile returns the q-quantile of xs (nearest rank).
func quantile(xs []float64, q float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// trimmedMean is the mean of xs without its lowest and highest tenth: on a
// loaded machine a receiver that is not scheduled for 30 ms now and then
// adds outliers that say nothing about the link.
func trimmedMean(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	k := len(s) / 10
	return mean(s[k : len(s)-k])
}

func meanInt(xs []int) float64 {
	var s int
	for _, x := range xs {
		s += x
	}
	return float64(s) / float64(len(xs))
}

func TestLinkConfigValidate(t *testing.T) {
	ge, err := BurstLoss(0.05, 4)
	if err != nil {
		t.Fatal(err)
	}
	good := LinkConfig{
		Up:   LinkProfile{Loss: 0.02, Delay: 20 * time.Millisecond, Jitter: 2 * time.Millisecond, Rate: 100e6, Queue: 256 << 10, Reorder: 0.01, ReorderDelay: time.Millisecond, Duplicate: 0.005},
		Down: LinkProfile{Burst: ge},
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	tests := []struct {
		name  string
		cfg   LinkConfig
		field string
	}{
		{"loss above 1", LinkConfig{Up: LinkProfile{Loss: 1.5}}, "Up.Loss"},
		{"negative loss", LinkConfig{Down: LinkProfile{Loss: -0.1}}, "Down.Loss"},
		{"NaN loss", LinkConfig{Up: LinkProfile{Loss: math.NaN()}}, "Up.Loss"},
		{"loss and burst", LinkConfig{Up: LinkProfile{Loss: 0.1, Burst: ge}}, "Up.Loss"},
		{"burst probability", LinkConfig{Up: LinkProfile{Burst: &GilbertElliott{GoodToBad: 2, BadToGood: 0.5}}}, "Up.Burst.GoodToBad"},
		{"burst absorbing", LinkConfig{Up: LinkProfile{Burst: &GilbertElliott{GoodToBad: 0.1, LossBad: 1}}}, "Up.Burst.BadToGood"},
		{"negative delay", LinkConfig{Up: LinkProfile{Delay: -time.Millisecond}}, "Up.Delay"},
		{"jitter above delay", LinkConfig{Down: LinkProfile{Delay: time.Millisecond, Jitter: 2 * time.Millisecond}}, "Down.Jitter"},
		{"negative rate", LinkConfig{Up: LinkProfile{Rate: -1}}, "Up.Rate"},
		{"tiny rate", LinkConfig{Up: LinkProfile{Rate: 10}}, "Up.Rate"},
		{"queue without rate", LinkConfig{Up: LinkProfile{Queue: 64 << 10}}, "Up.Queue"},
		{"tiny queue", LinkConfig{Up: LinkProfile{Rate: 1e6, Queue: 100}}, "Up.Queue"},
		{"reorder above 1", LinkConfig{Down: LinkProfile{Reorder: 2}}, "Down.Reorder"},
		{"reorder delay alone", LinkConfig{Down: LinkProfile{ReorderDelay: time.Millisecond}}, "Down.ReorderDelay"},
		{"duplicate above 1", LinkConfig{Up: LinkProfile{Duplicate: 1.01}}, "Up.Duplicate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tt.field)
			}
			if _, err := ListenLink("127.0.0.1:0", "127.0.0.1:9", tt.cfg); err == nil {
				t.Fatal("ListenLink accepted the config")
			}
		})
	}
}

func TestLinkBurstLossModel(t *testing.T) {
	for _, tt := range []struct{ loss, burst float64 }{{0.05, 4}, {0.01, 1}, {0.2, 10}} {
		g, err := BurstLoss(tt.loss, tt.burst)
		if err != nil {
			t.Fatal(err)
		}
		if got := g.MeanLoss(); math.Abs(got-tt.loss) > 1e-12 {
			t.Errorf("BurstLoss(%v, %v).MeanLoss() = %v", tt.loss, tt.burst, got)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		var s geState
		s.start(g, rng, 0, 0)
		const n = 1_000_000
		lost, bursts, run := 0, 0, 0
		for range n {
			if s.lose(g, rng, 0) {
				lost++
				run++
			} else if run > 0 {
				bursts++
				run = 0
			}
		}
		rate, meanBurst := float64(lost)/n, float64(lost)/float64(bursts)
		t.Logf("loss %v burst %v: measured loss %.4f, mean burst %.2f over %d packets", tt.loss, tt.burst, rate, meanBurst, n)
		if math.Abs(rate-tt.loss) > 0.05*tt.loss {
			t.Errorf("loss %v burst %v: measured loss %.4f, want within 5%%", tt.loss, tt.burst, rate)
		}
		if math.Abs(meanBurst-tt.burst) > 0.05*tt.burst {
			t.Errorf("loss %v burst %v: measured mean burst %.2f, want within 5%%", tt.loss, tt.burst, meanBurst)
		}
	}
	for _, bad := range []struct{ loss, burst float64 }{{1, 5}, {-0.1, 5}, {0.1, 0.5}, {0.6, 1}, {math.NaN(), 2}, {0.1, math.Inf(1)}} {
		if _, err := BurstLoss(bad.loss, bad.burst); err == nil {
			t.Errorf("BurstLoss(%v, %v) accepted", bad.loss, bad.burst)
		}
	}
}

// TestLinkBurstLossClock: on a link with a rate the Gilbert–Elliott chain
// runs on the wire's clock, a step per slot of a full-size packet. Packets
// back to back, or faster than the rate, lose the asked share in bursts of
// the asked length; sparse packets lose the same share in shorter bursts,
// as the chain moves on between them; and a packet sent after an idle
// spell, a TCP retransmission after its timeout, is lost with the mean
// probability whatever state the last one met.
func TestLinkBurstLossClock(t *testing.T) {
	const (
		loss, burst = 0.05, 4.0
		rate        = 200e6
		slot        = fullPacket * 8e9 / rate // ns
		queue       = 1 << 20
	)
	g, err := BurstLoss(loss, burst)
	if err != nil {
		t.Fatal(err)
	}
	// After n steps a bad chain is still (or again) bad with probability
	// π + (1 − π)·(1 − p − r)^n; runs of losses end with the rest.
	burstAfter := func(steps float64) float64 {
		return 1 / ((1 - loss) * (1 - math.Pow(1-g.GoodToBad-g.BadToGood, steps)))
	}
	for _, c := range []struct {
		name    string
		spacing int64 // ns between packets
		burst   float64
	}{
		{"back to back", slot, burst},
		{"four times the rate", slot / 4, burst},
		{"a packet every 10 slots", 10 * slot, burstAfter(10)},
	} {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, 4))
			var s geState
			s.start(g, rng, rate, queue)
			const n = 1_000_000
			lost, bursts, run := 0, 0, 0
			for i := range int64(n) {
				if s.lose(g, rng, i*c.spacing) {
					lost++
					run++
				} else if run > 0 {
					bursts++
					run = 0
				}
			}
			rate, meanBurst := float64(lost)/n, float64(lost)/float64(bursts)
			t.Logf("measured loss %.4f in bursts of %.2f (want %.2f in bursts of %.2f)", rate, meanBurst, loss, c.burst)
			if math.Abs(rate-loss) > 0.05*loss || math.Abs(meanBurst-c.burst) > 0.05*c.burst {
				t.Errorf("loss %.4f in bursts of %.2f: want %.2f in bursts of %.2f, each within 5%%", rate, meanBurst, loss, c.burst)
			}
		})
	}
	t.Run("after an idle spell", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 6))
		const trials = 20000
		lost := 0
		for range trials {
			var s geState
			s.start(g, rng, rate, queue)
			// A burst begins: the window is lost, the sender falls
			// silent for a retransmission timeout of 200 ms.
			s.bad = true
			if !s.lose(g, rng, 0) {
				t.Fatal("a packet in the bad state of a Gilbert model got through")
			}
			if s.lose(g, rng, int64(200*time.Millisecond)) {
				lost++
			}
		}
		got := float64(lost) / trials
		t.Logf("a retransmission after 200 ms idle in a burst: lost %.4f of the time (mean loss %.2f)", got, loss)
		if math.Abs(got-loss) > 0.01 {
			t.Errorf("a packet after 200 ms idle is lost %.4f of the time, want the mean loss %.2f ± 0.01", got, loss)
		}
	})
}

// TestLinkLoss: random loss over real sockets is the rate asked for, with
// bursts no longer than chance makes them.
func TestLinkLoss(t *testing.T) {
	const n, want = 5000, 0.10
	run, st := oneWay(t, LinkProfile{Loss: want}, 1, probeOptions{n: n, size: 100, window: 64})
	got := distinct(run.arrivals)
	rate := 1 - float64(got)/n
	bursts := lossBursts(run.arrivals, n)
	t.Logf("loss %.1f%%: measured %.2f%% over %d datagrams, mean burst %.2f; link dropped %d of %d",
		100*want, 100*rate, n, meanInt(bursts), st.DroppedLoss, st.Received)
	if math.Abs(rate-want) > 0.02 {
		t.Errorf("measured loss %.3f, want %.2f ± 0.02", rate, want)
	}
	if mb := meanInt(bursts); mb > 1.3 {
		t.Errorf("random loss has mean burst %.2f, want about %.2f", mb, 1/(1-want))
	}
	if len(run.arrivals) != got {
		t.Errorf("%d arrivals of %d distinct datagrams, want no duplicates", len(run.arrivals), got)
	}
	if lost := uint64(n - got); st.DroppedLoss < lost || st.DroppedQueue != 0 || st.Failed != 0 {
		t.Errorf("stats %+v: want at least %d dropped by loss and nothing else", st, lost)
	}
}

// TestLinkBurstLoss: a Gilbert model built from an average and a mean burst
// loses that average, in bursts of that length.
func TestLinkBurstLoss(t *testing.T) {
	const n, want, burst = 8000, 0.05, 4.0
	ge, err := BurstLoss(want, burst)
	if err != nil {
		t.Fatal(err)
	}
	run, st := oneWay(t, LinkProfile{Burst: ge}, 3, probeOptions{n: n, size: 100, window: 64})
	rate := 1 - float64(distinct(run.arrivals))/n
	bursts := lossBursts(run.arrivals, n)
	mb := meanInt(bursts)
	t.Logf("burst loss %.0f%% in bursts of %.0f: measured %.2f%% over %d datagrams, %d bursts of %.2f on average; link dropped %d",
		100*want, burst, 100*rate, n, len(bursts), mb, st.DroppedLoss)
	if math.Abs(rate-want) > 0.02 {
		t.Errorf("measured loss %.3f, want %.2f ± 0.02", rate, want)
	}
	if mb < burst*0.75 || mb > burst*1.25 {
		t.Errorf("measured mean burst %.2f, want %.1f ± 25%%", mb, burst)
	}
}

// TestLinkDelay: one probe in flight at a time, so that no datagram waits
// behind another and each sample is the link's delay plus the sockets'.
// The checks use the trimmed mean and the interquartile range, which
// scheduling hiccups of a loaded machine do not move.
func TestLinkDelay(t *testing.T) {
	const delay, jitter = 20 * time.Millisecond, 4 * time.Millisecond
	const n = 60
	run, _ := oneWay(t, LinkProfile{Delay: delay, Jitter: jitter}, 4, probeOptions{n: n, window: 1})
	var ms []float64
	for _, a := range run.arrivals {
		ms = append(ms, float64(a.at-a.sent)/1e6)
	}
	if len(ms) != n {
		t.Fatalf("%d of %d datagrams arrived", len(ms), n)
	}
	tm, iqr := trimmedMean(ms), quantile(ms, 0.75)-quantile(ms, 0.25)
	// Uniform over ±jitter: the quartiles are ±jitter/2 apart, the
	// standard deviation is jitter/√3.
	wantIQR := float64(jitter) / 1e6
	t.Logf("delay %v ± %v: measured trimmed mean %.2f ms, interquartile range %.2f ms (uniform: %.2f); mean %.2f ms, standard deviation %.2f ms (uniform: %.2f); min %.2f, max %.2f over %d datagrams",
		delay, jitter, tm, iqr, wantIQR, mean(ms), stddev(ms), wantIQR/math.Sqrt(3), slices.Min(ms), slices.Max(ms), n)
	// A loaded machine (the race detector, the other packages' tests)
	// wakes the emulator late, never early: a few ms late is the machine,
	// early or far late is the emulator.
	if tm < 19 || tm > 25 {
		t.Errorf("trimmed mean delay %.2f ms, want 20 (-1, +5)", tm)
	}
	if iqr < 0.6*wantIQR || iqr > 1.5*wantIQR {
		t.Errorf("delay interquartile range %.2f ms, want %.2f (-40%%, +50%%)", iqr, wantIQR)
	}
	if lo := slices.Min(ms); lo < 16-0.1 {
		t.Errorf("shortest delay %.2f ms, below delay - jitter", lo)
	}
}

// TestLinkRate: a sender that keeps the queue full gets the rate, and
// nothing is dropped while its window fits the queue. The window holds
// 40 ms at the rate, so that a receiver descheduled for a while does not
// let the link run dry; the rate is measured between the 5th and the 95th
// percentile of arrivals, away from the ends where a late wake-up shows.
func TestLinkRate(t *testing.T) {
	const rate, size, n = 50e6, 1200, 2500
	run, st := oneWay(t, LinkProfile{Rate: rate}, 5, probeOptions{n: n, size: size, window: 200})
	a := run.arrivals
	if len(a) != n || st.DroppedQueue != 0 {
		t.Fatalf("%d of %d arrived, stats %+v", len(a), n, st)
	}
	first, last := n/20, n*19/20
	got := float64(8*size*(last-first)) / (float64(a[last].at-a[first].at) / 1e9)
	whole := float64(8*size*(n-1)) / (float64(a[n-1].at-a[0].at) / 1e9)
	t.Logf("rate %.0f Mbit/s: delivered %.2f Mbit/s of %d-byte datagrams (%.2f Mbit/s from first to last)", rate/1e6, got/1e6, size, whole/1e6)
	if math.Abs(got-rate) > 0.1*rate {
		t.Errorf("goodput %.2f Mbit/s, want %.0f ± 10%%", got/1e6, rate/1e6)
	}
}

// TestLinkDropTail: a burst larger than the queue loses what does not fit,
// and what fits waits at most the queue's length at the rate. The rate is
// low, 4 ms a datagram, so that the few milliseconds a loaded machine may
// take the link to read the burst drain little of the queue.
func TestLinkDropTail(t *testing.T) {
	const rate, queue, size, n = 2e6, 32 << 10, 1000, 200
	run, st := oneWay(t, LinkProfile{Rate: rate, Queue: queue}, 6, probeOptions{n: n, size: size, window: n + 16})
	got := distinct(run.arrivals)
	perDatagram := time.Duration(size * 8 / rate * 1e9)
	fits := float64(queue) / size
	// What drained while the burst was sent, and while the link, late by
	// up to 20 ms, read it.
	drained := float64(run.sending+20*time.Millisecond) / float64(perDatagram)
	var maxDelay time.Duration
	for _, a := range run.arrivals {
		maxDelay = max(maxDelay, time.Duration(a.at-a.sent))
	}
	full := time.Duration(float64(queue) * 8 / rate * 1e9)
	t.Logf("burst of %d × %d B into a %d B queue at %.0f Mbit/s, sent in %v: %d delivered, %d dropped by the queue; longest delay %v (a full queue: %v)",
		n, size, queue, rate/1e6, run.sending, got, st.DroppedQueue, maxDelay, full)
	if float64(got) < fits-1 || float64(got) > fits+drained+1 {
		t.Errorf("%d delivered, want the %.0f that fit plus up to %.1f drained while the burst came in", got, fits, drained)
	}
	if st.DroppedQueue < uint64(n-got) {
		t.Errorf("stats %+v: want at least %d dropped by the queue", st, n-got)
	}
	// Scheduling hiccups only lengthen delays; the upper bound allows for
	// them and still refuses a queue a third longer.
	if maxDelay < full*9/10 || maxDelay > full+40*time.Millisecond {
		t.Errorf("longest delay %v, want about %v, a full queue", maxDelay, full)
	}
}

// TestLinkReorder: held-back datagrams arrive after later ones, in the
// proportion asked for; jitter alone never reorders.
func TestLinkReorder(t *testing.T) {
	const n = 4000
	late := func(a []arrival) int {
		k, top := 0, uint64(0)
		for i, x := range a {
			if i > 0 && x.seq < top {
				k++
			}
			top = max(top, x.seq)
		}
		return k
	}
	t.Run("reorder", func(t *testing.T) {
		const want = 0.05
		run, st := oneWay(t, LinkProfile{Reorder: want, ReorderDelay: 5 * time.Millisecond}, 7, probeOptions{n: n, size: 200, window: 64, all: true})
		got := float64(late(run.arrivals)) / n
		t.Logf("reorder %.0f%%: %.2f%% of %d datagrams arrived after a later one; link held back %d", 100*want, 100*got, n, st.Reordered)
		if math.Abs(got-want) > 0.015 {
			t.Errorf("%.3f of datagrams overtaken, want %.2f ± 0.015", got, want)
		}
		if d := math.Abs(float64(st.Reordered)/float64(st.Received) - want); d > 0.015 {
			t.Errorf("link held back %d of %d", st.Reordered, st.Received)
		}
	})
	t.Run("jitter keeps order", func(t *testing.T) {
		run, st := oneWay(t, LinkProfile{Delay: 3 * time.Millisecond, Jitter: 3 * time.Millisecond}, 8, probeOptions{n: 1000, size: 200, window: 64})
		if k := late(run.arrivals); k != 0 || len(run.arrivals) != 1000 || st.Reordered != 0 {
			t.Errorf("%d of %d datagrams out of order with jitter alone, want none", k, len(run.arrivals))
		}
	})
}

func TestLinkDuplicate(t *testing.T) {
	const n, want = 4000, 0.05
	run, st := oneWay(t, LinkProfile{Duplicate: want}, 9, probeOptions{n: n, size: 200, window: 64})
	if d := distinct(run.arrivals); d != n {
		t.Fatalf("%d of %d distinct datagrams arrived", d, n)
	}
	got := float64(len(run.arrivals)-n) / n
	t.Logf("duplicate %.0f%%: %.2f%% of %d datagrams arrived twice; link duplicated %d", 100*want, 100*got, n, st.Duplicated)
	if math.Abs(got-want) > 0.015 {
		t.Errorf("%.3f of datagrams duplicated, want %.2f ± 0.015", got, want)
	}
}

// TestLinkDirectionsIndependent: loss up, delay and duplication down, seen
// through an echo server that stamps the time it saw each datagram.
func TestLinkDirectionsIndependent(t *testing.T) {
	echo := startEcho(t)
	l := runLink(t, echo.addr(), LinkConfig{
		Up:   LinkProfile{Loss: 0.2},
		Down: LinkProfile{Delay: 10 * time.Millisecond, Duplicate: 0.1},
		Seed: 10,
	})
	c := dialUDP(t, l.Addr())
	const n = 400
	run := sendProbes(t, c, c, probeOptions{n: n, window: 16})
	up, down := l.Stats()
	var upMs, downMs []float64
	for _, a := range run.arrivals {
		upMs = append(upMs, float64(a.echoed-a.sent)/1e6)
		downMs = append(downMs, float64(a.at-a.echoed)/1e6)
	}
	loss := 1 - float64(distinct(run.arrivals))/n
	dup := float64(len(run.arrivals)-distinct(run.arrivals)) / float64(distinct(run.arrivals))
	t.Logf("up: loss %.1f%%, delay %.2f ms; down: duplicated %.1f%%, delay %.2f ms (trimmed means); stats up %+v down %+v",
		100*loss, trimmedMean(upMs), 100*dup, trimmedMean(downMs), up, down)
	if up.DroppedLoss == 0 || down.DroppedLoss != 0 {
		t.Errorf("dropped by loss: up %d, down %d; want only up", up.DroppedLoss, down.DroppedLoss)
	}
	if down.Duplicated == 0 || up.Duplicated != 0 {
		t.Errorf("duplicated: up %d, down %d; want only down", up.Duplicated, down.Duplicated)
	}
	if math.Abs(loss-0.2) > 0.06 || math.Abs(dup-0.1) > 0.05 {
		t.Errorf("loss %.3f (want 0.2), duplicated %.3f (want 0.1)", loss, dup)
	}
	// Late, never early, on a loaded machine (see TestLinkDelay); what
	// matters here is that each direction has its own delay.
	upDelay, downDelay := trimmedMean(upMs), trimmedMean(downMs)
	if downDelay < 9 || downDelay > 15 || upDelay > downDelay-5 {
		t.Errorf("up delay %.2f ms, down %.2f ms; want about 0 and 10 (-1, +5)", upDelay, downDelay)
	}
}

// TestLinkManyClients: each client gets its own upstream socket and only
// its own answers.
func TestLinkManyClients(t *testing.T) {
	echo := startEcho(t)
	l := runLink(t, echo.addr(), LinkConfig{Up: LinkProfile{Delay: time.Millisecond}, Down: LinkProfile{Delay: time.Millisecond}})
	const clients, n = 3, 50
	var wg sync.WaitGroup
	errs := make(chan string, clients*n)
	for i := range clients {
		c := dialUDP(t, l.Addr())
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			buf := make([]byte, 64)
			for k := range n {
				msg := []byte{byte(i), byte(k)}
				if _, err := c.Write(msg); err != nil {
					errs <- err.Error()
					return
				}
				m, err := c.Read(buf)
				if err != nil {
					errs <- err.Error()
					return
				}
				if !bytes.Equal(buf[:m], msg) {
					errs <- "client got another client's datagram"
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	echo.mu.Lock()
	peers := len(echo.peers)
	echo.mu.Unlock()
	// A datagram can reach its receiver before the link has counted it
	// delivered, but never before it has counted it received.
	up, down := l.Stats()
	if peers != clients || up.Received != clients*n || down.Received != clients*n {
		t.Errorf("the server saw %d peers, want %d; stats up %+v down %+v", peers, clients, up, down)
	}
}

// TestLinkDeterministic: the same seed and the same datagrams make the
// same decisions; another seed makes others.
func TestLinkDeterministic(t *testing.T) {
	ge, err := BurstLoss(0.1, 3)
	if err != nil {
		t.Fatal(err)
	}
	p := LinkProfile{Burst: ge, Delay: time.Millisecond, Jitter: time.Millisecond, Duplicate: 0.05}
	delivered := func(seed uint64) []uint64 {
		run, _ := oneWay(t, p, seed, probeOptions{n: 1000, size: 64, window: 32})
		var seqs []uint64
		for _, a := range run.arrivals {
			seqs = append(seqs, a.seq)
		}
		return seqs
	}
	a, b, c := delivered(42), delivered(42), delivered(43)
	if !slices.Equal(a, b) {
		t.Errorf("two runs with seed 42 delivered different datagrams: %d and %d", len(a), len(b))
	}
	if slices.Equal(a, c) {
		t.Error("seeds 42 and 43 delivered the same datagrams")
	}
}

// decisions feeds n datagrams of 1200 bytes, one every 10 µs, to a new
// direction with profile p and returns what became of each: "lost",
// "queue" (dropped by the queue), or when and how many times it is sent.
func decisions(p LinkProfile, seed uint64, n int) []string {
	d := newLinkDirection(p, seed, 1, true)
	pkt := make([]byte, 1200)
	out := make([]string, n)
	bySeq := make(map[uint64]int)
	for i := range n {
		before := d.counters.load()
		d.arrive(nil, int64(i)*10_000, nil, pkt)
		after := d.counters.load()
		switch {
		case after.DroppedLoss > before.DroppedLoss:
			out[i] = "lost"
		case after.DroppedQueue > before.DroppedQueue:
			out[i] = "queue"
		default:
			bySeq[d.seq] = i
		}
	}
	for len(d.pending) > 0 {
		x := d.pending.pop()
		out[bySeq[x.seq]] = fmt.Sprintf("at %d ×%d", x.at, x.copies)
	}
	return out
}

// TestLinkDecisionsDeterministic: every decision, reordering and jitter
// included, is a function of the seed and the arrivals; and each kind of
// decision has its own random stream, so that adding duplication does
// not change which datagrams are lost.
func TestLinkDecisionsDeterministic(t *testing.T) {
	ge, err := BurstLoss(0.05, 3)
	if err != nil {
		t.Fatal(err)
	}
	p := LinkProfile{Burst: ge, Delay: 10 * time.Millisecond, Jitter: 2 * time.Millisecond, Rate: 500e6, Queue: 16 << 10,
		Reorder: 0.05, Duplicate: 0.05}
	const n = 20000
	a, b, c := decisions(p, 1, n), decisions(p, 1, n), decisions(p, 2, n)
	if !slices.Equal(a, b) {
		t.Error("the same seed and arrivals made different decisions")
	}
	if slices.Equal(a, c) {
		t.Error("seeds 1 and 2 made the same decisions")
	}
	counts := map[string]int{}
	for _, x := range a {
		counts[strings.Fields(x)[0]]++
	}
	if counts["lost"] == 0 || counts["queue"] == 0 || counts["at"] == 0 {
		t.Errorf("outcomes %v: want losses, queue drops and deliveries", counts)
	}
	q := p
	q.Duplicate = 0.5
	lost := func(xs []string) []int {
		var idx []int
		for i, x := range xs {
			if x == "lost" {
				idx = append(idx, i)
			}
		}
		return idx
	}
	if !slices.Equal(lost(a), lost(decisions(q, 1, n))) {
		t.Error("changing Duplicate changed which datagrams were lost")
	}
}

// TestLinkLargeDatagrams: datagrams up to the largest UDP payload cross a
// link intact, held for a delay (pooled buffers) or not.
func TestLinkLargeDatagrams(t *testing.T) {
	for _, p := range []LinkProfile{{}, {Delay: time.Millisecond}} {
		sink := listenUDP(t)
		l := runLink(t, sink.LocalAddr().String(), LinkConfig{Up: p})
		c := dialUDP(t, l.Addr())
		sink.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, maxDatagram)
		rng := rand.New(rand.NewPCG(5, 6))
		for _, size := range []int{0, 1, 1500, 2048, 2049, 9000, 16 << 10, 65507} {
			msg := make([]byte, size)
			for i := range msg {
				msg[i] = byte(rng.Uint32())
			}
			if _, err := c.Write(msg); err != nil {
				t.Fatalf("send %d bytes: %v", size, err)
			}
			k, err := sink.Read(buf)
			if err != nil || !bytes.Equal(buf[:k], msg) {
				t.Fatalf("delay %v: sent %d bytes, received %d (%v), equal %v", p.Delay, size, k, err, bytes.Equal(buf[:k], msg))
			}
		}
	}
}

// TestLinkQUICTransfer pushes a file with chunksync through a lossy,
// delayed link that reorders and duplicates both ways, and checks the
// server's copy.
func TestLinkQUICTransfer(t *testing.T) {
	s := startTestServer(t)
	ctx := t.Context()
	p := LinkProfile{Loss: 0.05, Delay: 10 * time.Millisecond, Jitter: time.Millisecond, Reorder: 0.02, Duplicate: 0.02}
	l := runLink(t, s.srv.Addr().String(), LinkConfig{Up: p, Down: p, Seed: 11})

	local := filepath.Join(t.TempDir(), "f")
	const size = 1 << 20
	if err := WriteRandomFile(local, size, 12); err != nil {
		t.Fatal(err)
	}
	client, err := transport.Dial(ctx, transport.ClientConfig{Addr: l.Addr().String(), Token: s.token, Fingerprint: s.srv.Fingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := engine.LookupChunker("fixed")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := engine.Push(ctx, client, local, "f", engine.PushOptions{Chunker: c.Defaults, Raw: true}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	up, down := l.Stats()
	t.Logf("pushed %d bytes in %v; up %+v; down %+v", size, took, up, down)
	want, err := os.ReadFile(local)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(s.files, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the server's copy differs")
	}
	if up.DroppedLoss == 0 || down.DroppedLoss == 0 || up.Reordered == 0 || up.Duplicated == 0 {
		t.Errorf("the link did not impair the transfer: up %+v, down %+v", up, down)
	}
}

// TestLinkServeEnds: Serve returns on cancel with datagrams still waiting,
// Close ends it too, and it runs once.
func TestLinkServeEnds(t *testing.T) {
	sink := listenUDP(t)
	for _, how := range []string{"cancel", "close"} {
		t.Run(how, func(t *testing.T) {
			l, err := ListenLink("127.0.0.1:0", sink.LocalAddr().String(), LinkConfig{Up: LinkProfile{Delay: time.Hour}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- l.Serve(ctx) }()
			c := dialUDP(t, l.Addr())
			c.Write([]byte("waits for an hour"))
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
			l.Close()
		})
	}
}

// BenchmarkLink measures how fast a link relays 1200-byte datagrams, with
// a window of datagrams in flight so that no socket buffer overflows, next
// to the same sender and receiver without a link. The profiles lose
// nothing: a lost datagram would stall the window.
func BenchmarkLink(b *testing.B) {
	for _, bc := range []struct {
		name string
		p    *LinkProfile // nil: no link, the sockets alone
	}{
		{"no-link", nil},
		{"unlimited", &LinkProfile{}},
		{"delay=1ms", &LinkProfile{Delay: time.Millisecond}},
		{"rate=10Gbit", &LinkProfile{Rate: 10e9}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			// The window covers a millisecond's delay at a few Gbit/s
			// and fits the 4 MiB socket buffers.
			const size, window = 1200, 1024
			sink := listenUDP(b)
			to := sink.LocalAddr()
			if bc.p != nil {
				to = runLink(b, to.String(), LinkConfig{Up: *bc.p}).Addr()
			}
			c := dialUDP(b, to)
			var received atomic.Int64
			progress := make(chan struct{}, 1)
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, maxDatagram)
				for {
					if _, err := sink.Read(buf); err != nil {
						return
					}
					received.Add(1)
					select {
					case progress <- struct{}{}:
					default:
					}
				}
			}()
			// Every datagram must arrive: one lost stalls the window, and
			// the benchmark fails rather than hangs.
			stall := time.NewTimer(time.Hour)
			defer stall.Stop()
			wait := func() {
				stall.Reset(5 * time.Second)
				select {
				case <-progress:
				case <-stall.C:
					b.Fatalf("datagrams lost: %d of %d arrived", received.Load(), b.N)
				}
			}
			pkt := make([]byte, size)
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				for int64(i)-received.Load() >= window {
					wait()
				}
				if _, err := c.Write(pkt); err != nil {
					b.Fatal(err)
				}
			}
			for received.Load() < int64(b.N) {
				wait()
			}
			b.StopTimer()
			b.ReportMetric(float64(size*8*b.N)/b.Elapsed().Seconds()/1e9, "Gbit/s")
			sink.Close()
			<-done
		})
	}
}

// TestLinkDown: a link taken down drops what clients send and what was
// already crossing it, counts it, and relays again on the same flow once
// it is up.
func TestLinkDown(t *testing.T) {
	echo := startEcho(t)
	l := runLink(t, echo.addr(), LinkConfig{Up: LinkProfile{Delay: 100 * time.Millisecond}})
	c := dialUDP(t, l.Addr())
	roundTrip := func(msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != msg {
			t.Fatalf("echo of %q through the link: %q %v", msg, buf[:n], err)
		}
	}
	waitDropped := func(n uint64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; {
			up, down := l.Stats()
			if up.DroppedDown == n {
				if down.DroppedDown != 0 || up.Failed != 0 {
					t.Fatalf("up %+v, down %+v: only the way up had anything to drop", up, down)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("link dropped %d datagrams while down, want %d", up.DroppedDown, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	roundTrip("before")
	// One datagram is on the wire (100 ms of delay) when the link goes
	// down, five more come while it is down: none reaches the server.
	if _, err := c.Write([]byte("in flight")); err != nil {
		t.Fatal(err)
	}
	l.SetDown(true)
	for range 5 {
		if _, err := c.Write([]byte("while down")); err != nil {
			t.Fatal(err)
		}
	}
	waitDropped(6)
	echo.mu.Lock()
	peers, received := len(echo.peers), 0
	for _, n := range echo.peers {
		received += n
	}
	echo.mu.Unlock()
	if peers != 1 || received != 1 {
		t.Fatalf("echo server received %d datagrams from %d peers, want only the one sent before the link went down, on the link's one flow", received, peers)
	}
	l.SetDown(false)
	roundTrip("after")
}
