package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// loopbackUDP opens a socket on an ephemeral port of 127.0.0.1.
func loopbackUDP(tb testing.TB) *net.UDPConn {
	tb.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	c.SetWriteBuffer(4 << 20)
	tb.Cleanup(func() { c.Close() })
	return c
}

// newFEC wraps a new loopback socket.
func newFEC(tb testing.TB, opts ...FECOption) *FECConn {
	tb.Helper()
	c, err := NewFECConn(loopbackUDP(tb), opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func addrPort(a net.Addr) netip.AddrPort { return a.(*net.UDPAddr).AddrPort() }

func TestFECFrameRoundTrip(t *testing.T) {
	payload := []byte("a QUIC packet, as far as FEC knows")
	for _, tc := range []struct {
		name  string
		frame []byte
		want  fecFrame
	}{
		{"unprotected", appendFECData(nil, 7, 0, 0, 0, 0, payload), fecFrame{typ: fecTypeData, seq: 7, payload: payload}},
		{"empty", appendFECData(nil, 1, 0, 0, 0, 0, nil), fecFrame{typ: fecTypeData, seq: 1, payload: []byte{}}},
		{"data", appendFECData(nil, 1<<31+5, 99, 16, 4, 15, payload), fecFrame{typ: fecTypeData, seq: 1<<31 + 5, group: 99, k: 16, m: 4, index: 15, payload: payload}},
		{"largest data", appendFECData(nil, 0, 1, fecMaxK, fecMaxM, fecMaxK-1, make([]byte, fecMaxPayload)),
			fecFrame{typ: fecTypeData, group: 1, k: fecMaxK, m: fecMaxM, index: fecMaxK - 1, payload: make([]byte, fecMaxPayload)}},
		{"parity", appendFECParity(nil, 3, 98, 16, 4, 3, 9, []byte{0, 5, 1, 2, 3, 4, 5}),
			fecFrame{typ: fecTypeParity, seq: 3, group: 98, k: 16, m: 4, index: 3, count: 9, shard: []byte{0, 5, 1, 2, 3, 4, 5}}},
		{"feedback", appendFECFeedback(nil, fecCounts{1, 2, 3, 4, math.MaxUint32}),
			fecFrame{typ: fecTypeFeedback, counts: fecCounts{1, 2, 3, 4, math.MaxUint32}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.frame[0]&0x40 != 0 {
				t.Fatalf("first byte %#x has QUIC's fixed bit", tc.frame[0])
			}
			got, err := parseFECFrame(tc.frame)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want.typ == fecTypeData {
				tc.want.shard = tc.frame[fecHeaderLen:]
			}
			if !sameFrame(got, tc.want) {
				t.Fatalf("decoded %+v, want %+v", got, tc.want)
			}
		})
	}
}

func sameFrame(a, b fecFrame) bool {
	return a.typ == b.typ && a.seq == b.seq && a.group == b.group && a.k == b.k && a.m == b.m && a.index == b.index &&
		a.count == b.count && bytes.Equal(a.payload, b.payload) && bytes.Equal(a.shard, b.shard) && a.counts == b.counts
}

func TestFECParseRejects(t *testing.T) {
	data := appendFECData(nil, 1, 2, 8, 2, 3, []byte("payload"))
	parity := appendFECParity(nil, 1, 2, 8, 2, 1, 8, []byte("0123456789"))
	with := func(b []byte, i int, v byte) []byte {
		b = slices.Clone(b)
		b[i] = v
		return b
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		want  error
	}{
		{"empty", nil, errFECTruncated},
		{"one byte", []byte{fecMagic}, errFECTruncated},
		{"QUIC short header", []byte{0x40, 1, 2, 3}, errFECMalformed},
		{"magic", with(data, 0, 0xA4), errFECMalformed},
		{"version", with(data, 1, 2<<4|fecTypeData), errFECMalformed},
		{"type 0", with(data, 1, fecVersion<<4), errFECMalformed},
		{"type 4", with(data, 1, fecVersion<<4|4), errFECMalformed},
		{"data header cut", data[:fecHeaderLen+1], errFECTruncated},
		{"data payload cut", data[:len(data)-1], errFECTruncated},
		{"data trailing bytes", append(slices.Clone(data), 0), errFECMalformed},
		{"unprotected with group", appendFECData(nil, 1, 2, 0, 0, 0, nil), errFECMalformed},
		{"unprotected with k", appendFECData(nil, 1, 0, 4, 0, 0, nil), errFECMalformed},
		{"k 0", with(data, 10, 0), errFECMalformed},
		{"k too large", with(data, 10, fecMaxK+1), errFECMalformed},
		{"m too large", with(data, 11, fecMaxM+1), errFECMalformed},
		{"index past k", with(data, 12, 8), errFECMalformed},
		{"protected payload too large", appendFECData(nil, 1, 2, 8, 2, 3, make([]byte, fecMaxPayload+1)), errFECMalformed},
		{"parity header cut", parity[:fecParityHeaderLen+1], errFECTruncated},
		{"parity m 0", with(parity, 11, 0), errFECMalformed},
		{"parity index past m", with(parity, 12, 2), errFECMalformed},
		{"parity count 0", with(parity, 13, 0), errFECMalformed},
		{"parity count past k", with(parity, 13, 9), errFECMalformed},
		{"parity shard too large", appendFECParity(nil, 1, 2, 8, 2, 1, 8, make([]byte, fecMaxShard+1)), errFECMalformed},
		{"feedback cut", appendFECFeedback(nil, fecCounts{})[:fecFeedbackLen-1], errFECTruncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseFECFrame(tc.frame); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzParseFECFrame: no input panics the decoder, and what it accepts
// encodes back to the same bytes.
func FuzzParseFECFrame(f *testing.F) {
	for _, seed := range fecSeedFrames() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := parseFECFrame(b)
		if err != nil {
			return
		}
		if b[0]&0x40 != 0 {
			t.Fatalf("accepted a frame with QUIC's fixed bit: %#x", b[0])
		}
		var again []byte
		switch fr.typ {
		case fecTypeData:
			again = appendFECData(nil, fr.seq, fr.group, fr.k, fr.m, fr.index, fr.payload)
		case fecTypeParity:
			again = appendFECParity(nil, fr.seq, fr.group, fr.k, fr.m, fr.index, fr.count, fr.shard)
		case fecTypeFeedback:
			again, b = appendFECFeedback(nil, fr.counts), b[:fecFeedbackLen]
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("round trip: %x → %+v → %x", b, fr, again)
		}
	})
}

// FuzzFECReceive feeds a receiver a sequence of datagrams (each a u16
// length and its bytes) from two peers: nothing panics, and the memory it
// holds stays within its bounds.
func FuzzFECReceive(f *testing.F) {
	var seq []byte
	for _, fr := range fecSeedFrames() {
		seq = binary.BigEndian.AppendUint16(seq, uint16(len(fr)))
		seq = append(seq, fr...)
	}
	f.Add(seq)
	f.Add(fecGroupStream(f, 4, 2, 3))
	f.Add(fecGroupStream(f, 16, 4, 16))
	cfg := defaultFECConfig()
	WithFECMemory(fecMaxShard*fecMaxShards, 2*fecMaxShard*fecMaxShards)(&cfg)
	initial := initialPlan(&cfg)
	p := make([]byte, 2048)
	peers := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2")}
	f.Fuzz(func(t *testing.T, b []byte) {
		// A new receiver each time, without socket or timers: what one
		// input does must not depend on the inputs before it.
		c := newFECConn(nil, cfg, initial)
		for i := 0; len(b) >= 2; i++ {
			n := min(int(binary.BigEndian.Uint16(b)), len(b)-2)
			c.receive(p, b[2:2+n], peers[i%2])
			for {
				if _, _, ok := c.popReady(p); !ok {
					break
				}
			}
			b = b[2+n:]
			if held := c.Stats().HeldBytes; held > c.cfg.totalMemory || held < 0 {
				t.Fatalf("holds %d bytes, bound %d", held, c.cfg.totalMemory)
			}
		}
	})
}

// fecSeedFrames are valid frames of every kind and a few near misses.
func fecSeedFrames() [][]byte {
	return [][]byte{
		appendFECData(nil, 1, 0, 0, 0, 0, []byte("plain")),
		appendFECData(nil, 2, 7, 4, 2, 0, []byte("protected")),
		appendFECData(nil, 3, 7, 4, 2, 3, nil),
		appendFECParity(nil, 4, 7, 4, 2, 0, 3, []byte("0123456789ab")),
		appendFECParity(nil, 5, 7, 4, 2, 1, 4, make([]byte, fecMaxShard)),
		appendFECFeedback(nil, fecCounts{100, 99, 1, 1, 0}),
		{fecMagic},
		{fecMagic, fecVersion<<4 | fecTypeParity, 0, 0, 0, 0},
		{0x41, 0, 0},
	}
}

// fecGroupStream is the encoding, as FuzzFECReceive takes it, of a group
// of k data datagrams and m parity, made as a sender makes them, with the
// frame at index lose left out. It uses no socket: fuzzing workers run
// it too.
func fecGroupStream(tb testing.TB, k, m, lose int) []byte {
	enc, err := fecCodec(k, m)
	if err != nil {
		tb.Fatal(err)
	}
	var g fecSendGroup
	g.reset(1, m)
	var frames [][]byte
	for i := range k {
		fr := appendFECData(nil, uint32(i), 1, k, m, i, bytes.Repeat([]byte{byte(i)}, 10*i))
		if err := g.add(enc, fr[fecHeaderLen:], i); err != nil {
			tb.Fatal(err)
		}
		frames = append(frames, fr)
	}
	for j := range m {
		frames = append(frames, appendFECParity(nil, uint32(k+j), 1, k, m, j, k, g.parity[j][:g.maxLen]))
	}
	var out []byte
	for i, fr := range frames {
		if i == lose {
			continue
		}
		out = binary.BigEndian.AppendUint16(out, uint16(len(fr)))
		out = append(out, fr...)
	}
	return out
}

// sendGroup has a sender with shape write count datagrams of random sizes
// (seeded) to a plain socket, and returns the frames that arrive: the data
// and then the parity, sent when the group is full or, for a shorter one,
// as its flush delay would.
func sendGroup(tb testing.TB, shape FECShape, count int, seed uint64) [][]byte {
	tb.Helper()
	tap := loopbackUDP(tb)
	// The test closes a short group itself: a timer could close one
	// half-written on a busy machine.
	s := newFEC(tb, WithFECFixedShape(shape), WithFECFlushDelay(time.Hour))
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := range count {
		n := rng.IntN(1300)
		if i == 1 {
			n = 0 // the shortest shard: only its length
		}
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		if _, err := s.WriteTo(p, tap.LocalAddr()); err != nil {
			tb.Fatal(err)
		}
	}
	want := count + shape.M*shape.Depth
	if count < shape.K*shape.Depth {
		want = count + shape.M*min(count, shape.Depth)
		peer := s.peer(addrPort(tap.LocalAddr()))
		peer.send.mu.Lock()
		s.closeBlock(peer)
		peer.send.mu.Unlock()
	}
	frames := make([][]byte, 0, want)
	buf := make([]byte, 64<<10)
	tap.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(frames) < want {
		n, err := tap.Read(buf)
		if err != nil {
			tb.Fatalf("%d of %d frames arrived: %v", len(frames), want, err)
		}
		frames = append(frames, slices.Clone(buf[:n]))
	}
	return frames
}

// subsets calls fn with every subset of {0…n-1} of at most max elements.
func subsets(n, max int, fn func([]int)) {
	var rec func(start int, cur []int)
	rec = func(start int, cur []int) {
		fn(cur)
		if len(cur) == max {
			return
		}
		for i := start; i < n; i++ {
			rec(i+1, append(cur, i))
		}
	}
	rec(0, nil)
}

// TestFECRepairsAnyLoss loses every subset of at most m frames of a group
// (every frame, data or parity, in turn) and checks that the receiver
// delivers each data datagram exactly once and intact, whatever the order
// the rest arrive in; groups closed early by the flush timer included.
func TestFECRepairsAnyLoss(t *testing.T) {
	for _, tc := range []struct {
		shape FECShape
		count int
	}{
		{FECShape{K: 4, M: 2, Depth: 1}, 4},
		{FECShape{K: 5, M: 3, Depth: 1}, 5},
		{FECShape{K: 8, M: 3, Depth: 1}, 5}, // closed early: 3 data datagrams never sent
		{FECShape{K: 10, M: 1, Depth: 1}, 10},
		{FECShape{K: 3, M: 2, Depth: 2}, 6}, // two interleaved groups
		{FECShape{K: 4, M: 2, Depth: 2}, 5}, // closed early: groups of 3 and 2
		{FECShape{K: fecMaxK, M: 4, Depth: 1}, fecMaxK},
	} {
		t.Run(fmt.Sprintf("k=%d,m=%d,depth=%d,count=%d", tc.shape.K, tc.shape.M, tc.shape.Depth, tc.count), func(t *testing.T) {
			frames := sendGroup(t, tc.shape, tc.count, uint64(tc.count))
			var payloads [][]byte
			for _, fr := range frames {
				f, err := parseFECFrame(fr)
				if err != nil {
					t.Fatal(err)
				}
				if f.typ == fecTypeData {
					payloads = append(payloads, f.payload)
				}
			}
			if len(payloads) != tc.count {
				t.Fatalf("%d data frames, want %d", len(payloads), tc.count)
			}
			// Groups wait for the test's own tick (with a hold time that
			// has always passed), not for the timer's.
			r := newFEC(t, WithFECFeedbackInterval(time.Hour), WithFECHoldTime(time.Nanosecond))
			rng := rand.New(rand.NewPCG(3, uint64(tc.count)))
			port := uint16(1)
			patterns := 0
			try := func(lost []int) {
				// Each pattern from a new peer, so that each has its own
				// receiver state.
				from := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
				port++
				patterns++
				kept := make([][]byte, 0, len(frames))
				for i, fr := range frames {
					if !slices.Contains(lost, i) {
						kept = append(kept, fr)
					}
				}
				rng.Shuffle(len(kept), func(i, j int) { kept[i], kept[j] = kept[j], kept[i] })
				// Depth 2: a pattern may take more than m of one group.
				if tc.shape.Depth > 1 && !recoverable(frames, lost, tc.shape.M) {
					return
				}
				got := deliver(r, from, kept)
				if len(got) != tc.count {
					t.Fatalf("lost frames %v: %d datagrams delivered, want %d; %+v", lost, len(got), tc.count, r.Stats())
				}
				for _, p := range payloads {
					if !slices.ContainsFunc(got, func(g []byte) bool { return bytes.Equal(g, p) }) {
						t.Fatalf("lost frames %v: a datagram of %d bytes did not come back intact", lost, len(p))
					}
				}
			}
			if len(frames) <= 20 {
				subsets(len(frames), tc.shape.M, try)
			} else {
				// Too many patterns to try them all: a seeded sample.
				for range 300 {
					try(rng.Perm(len(frames))[:rng.IntN(tc.shape.M+1)])
				}
			}
			if patterns == 0 {
				t.Fatal("no pattern tested")
			}
			// Groups whose parity was all lost wait for the hold time,
			// not knowing they are complete; then nothing is held.
			r.tick(nil)
			if s := r.Stats(); s.Malformed != 0 || s.Truncated != 0 || s.Unrecovered != 0 || s.HeldBytes != 0 {
				t.Fatalf("stats after every pattern: %+v", s)
			}
		})
	}
}

// recoverable reports whether no group lost more than m frames.
func recoverable(frames [][]byte, lost []int, m int) bool {
	per := map[uint32]int{}
	for _, i := range lost {
		f, _ := parseFECFrame(frames[i])
		per[f.group]++
		if per[f.group] > m {
			return false
		}
	}
	return true
}

// deliver feeds frames to r as if from peer and returns what r delivers.
func deliver(r *FECConn, from netip.AddrPort, frames [][]byte) [][]byte {
	var got [][]byte
	p := make([]byte, 2048)
	for _, fr := range frames {
		if n, _, ok := r.receive(p, fr, from); ok {
			got = append(got, slices.Clone(p[:n]))
		}
		for {
			n, _, ok := r.popReady(p)
			if !ok {
				break
			}
			got = append(got, slices.Clone(p[:n]))
		}
	}
	return got
}

// TestFECDuplicates: frames that arrive twice, before or after repair,
// are delivered once.
func TestFECDuplicates(t *testing.T) {
	frames := sendGroup(t, FECShape{K: 6, M: 2, Depth: 1}, 6, 9)
	r := newFEC(t)
	from := netip.MustParseAddrPort("127.0.0.1:9")
	// Data 0 is lost at first, rebuilt from the parity, and then arrives
	// late; every other frame arrives twice.
	stream := slices.Concat(frames[1:], frames[1:], frames[:1])
	got := deliver(r, from, stream)
	if len(got) != 6 {
		t.Fatalf("%d datagrams delivered, want 6", len(got))
	}
	if s := r.Stats(); s.Duplicates != uint64(len(frames)) || s.Recovered != 1 {
		t.Fatalf("%d duplicates, %d recovered; want %d and 1", s.Duplicates, s.Recovered, len(frames))
	}
}

// TestFECGarbageDropped sends a receiver, through its socket, datagrams
// that are not valid frames, and then a valid one: the garbage is counted
// and dropped, the valid one delivered.
func TestFECGarbageDropped(t *testing.T) {
	r := newFEC(t)
	src := loopbackUDP(t)
	truncated := [][]byte{
		{fecMagic},
		appendFECData(nil, 1, 0, 0, 0, 0, []byte("cut short"))[:8],
		appendFECData(nil, 2, 0, 0, 0, 0, []byte("cut short"))[:20],
		appendFECParity(nil, 3, 1, 4, 1, 0, 4, []byte("xx"))[:fecParityHeaderLen],
		appendFECFeedback(nil, fecCounts{})[:10],
	}
	malformed := [][]byte{
		{0x00, 0x00, 0x00},
		{fecMagic, 0xff, 1, 2, 3},
		appendFECData(nil, 4, 1, 0, 1, 0, nil),
		appendFECParity(nil, 5, 1, 4, 1, 0, 5, []byte("xx")),
	}
	for _, b := range slices.Concat(truncated, malformed) {
		if _, err := src.WriteTo(b, r.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	want := []byte("the one valid datagram")
	if _, err := src.WriteTo(appendFECData(nil, 9, 0, 0, 0, 0, want), r.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	p := make([]byte, 2048)
	n, from, err := r.ReadFrom(p)
	if err != nil || !bytes.Equal(p[:n], want) || addrPort(from) != addrPort(src.LocalAddr()) {
		t.Fatalf("read %q from %v, %v", p[:n], from, err)
	}
	s := r.Stats()
	if s.Truncated != uint64(len(truncated)) || s.Malformed != uint64(len(malformed)) || s.DataReceived != 1 {
		t.Fatalf("truncated %d (want %d), malformed %d (want %d), data %d", s.Truncated, len(truncated), s.Malformed, len(malformed), s.DataReceived)
	}
}

// TestFECMemoryBounded floods a receiver with groups that never complete,
// from several peers: it holds no more than its bounds and drops the
// oldest groups.
func TestFECMemoryBounded(t *testing.T) {
	perPeer := int64(fecMaxShard * fecMaxShards)
	r := newFEC(t, WithFECMemory(perPeer, 2*perPeer))
	p := make([]byte, 2048)
	payload := make([]byte, 1200)
	for i := range 3000 {
		from := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(1+i%3))
		// Group i/8 of the peer, its data 0…7 of 16: never complete.
		fr := appendFECData(nil, uint32(i), uint32(i/8), 16, 4, i/3%8, payload)
		r.receive(p, fr, from)
		if held := r.Stats().HeldBytes; held > 2*perPeer {
			t.Fatalf("holds %d bytes after %d datagrams, bound %d", held, i+1, 2*perPeer)
		}
	}
	if s := r.Stats(); s.Evicted == 0 {
		t.Fatalf("no group dropped: %+v", s)
	}
}

func TestFECSeqWindow(t *testing.T) {
	var w fecSeqWindow
	for _, s := range []uint32{10, 11, 13, 14, 18, 12, 12, 19, 30} {
		w.add(s)
	}
	// Expected 10…30 (21), received 10, 11, 12, 13, 14, 18, 19, 30 (8),
	// gaps opened before 13, 18 and 30.
	if w.expected != 21 || w.received != 8 || w.gaps != 3 {
		t.Fatalf("expected %d, received %d, gaps %d", w.expected, w.received, w.gaps)
	}
	if w.add(30) || w.add(19) {
		t.Fatal("a duplicate was taken as new")
	}
	// Wrapping around is not a jump.
	w = fecSeqWindow{}
	w.add(math.MaxUint32 - 1)
	w.add(1)
	if w.expected != 4 || w.received != 2 || w.gaps != 1 {
		t.Fatalf("across the wrap: expected %d, received %d, gaps %d", w.expected, w.received, w.gaps)
	}
	// A restarted sender is not a loss.
	w.add(1 << 20)
	if w.expected != 5 || w.received != 3 {
		t.Fatalf("after a restart: expected %d, received %d", w.expected, w.received)
	}
}

// TestFECPlan checks the sender's choices: no parity when the loss is
// below the target, more parity for more loss, the residual the model
// predicts below the target when the overhead cap allows it, and the
// model itself against the binomial formula for random loss.
func TestFECPlan(t *testing.T) {
	cfg := fecConfig{target: 1e-4, maxOverhead: 0.5, maxDepth: 4}
	for _, loss := range []float64{0, 1e-5, 1e-4} {
		if p := planFEC(loss, 1, 0, &cfg); p.shape.M != 0 {
			t.Errorf("loss %v: shape %+v, want no parity", loss, p.shape)
		}
	}
	var last float64
	for _, loss := range []float64{0.001, 0.01, 0.03, 0.05, 0.1} {
		p := planFEC(loss, 1/(1-loss), 100, &cfg)
		t.Logf("loss %.3f: %+v overhead %.3f residual %.2g", loss, p.shape, p.shape.Overhead(), p.residual)
		if p.residual > cfg.target || p.shape.M == 0 || p.shape.Overhead() > cfg.maxOverhead {
			t.Errorf("loss %v: %+v, residual %v", loss, p.shape, p.residual)
		}
		if p.shape.Overhead() < last {
			t.Errorf("loss %v: overhead %v, below %v for less loss", loss, p.shape.Overhead(), last)
		}
		last = p.shape.Overhead()
	}
	// Beyond the cap: the most parity the cap allows.
	if p := planFEC(0.3, 1.5, 100, &cfg); p.shape.Overhead() > cfg.maxOverhead || p.shape.Overhead() < 0.4 || p.residual <= cfg.target {
		t.Errorf("loss 0.3: %+v, residual %v", p.shape, p.residual)
	}
	// Small groups (a slow sender) cost more parity than large ones.
	if slow, fast := planFEC(0.01, 1, 8, &cfg), planFEC(0.01, 1, 64, &cfg); slow.shape.Overhead() <= fast.shape.Overhead() {
		t.Errorf("window 8: %+v; window 64: %+v", slow.shape, fast.shape)
	}
	// Bursts need more protection than random loss of the same rate,
	// and interleaving is what buys it.
	random, bursty := planFEC(0.01, 1, 64, &cfg), planFEC(0.01, 4, 64, &cfg)
	t.Logf("1%% random: %+v residual %.2g; in bursts of 4: %+v residual %.2g", random.shape, random.residual, bursty.shape, bursty.residual)
	if bursty.shape.Overhead() <= random.shape.Overhead() {
		t.Errorf("bursty %+v, random %+v", bursty.shape, random.shape)
	}
	flat := cfg
	flat.maxDepth = 1
	if b := planFEC(0.01, 4, 64, &flat); b.shape.Overhead() < bursty.shape.Overhead() || b.residual < bursty.residual && b.shape.Overhead() == bursty.shape.Overhead() {
		t.Errorf("without interleaving %+v (residual %.2g) beats %+v", b.shape, b.residual, bursty.shape)
	}

	// The model against the closed form for random loss.
	for _, loss := range []float64{0.01, 0.05} {
		var need [fecMaxK + 1]uint8
		resid := lossModel(loss, 1/(1-loss), 1, 32, &cfg, &need)
		m := int(need[32])
		n := 32 + m
		want := loss * binomialTail(n-1, loss, m)
		if math.Abs(resid[32]-want) > 1e-9+want*1e-6 {
			t.Errorf("loss %v, 32+%d: model %v, binomial %v", loss, m, resid[32], want)
		}
	}
}

// binomialTail is P(Binomial(n, p) ≥ m).
func binomialTail(n int, p float64, m int) float64 {
	var sum float64
	for j := m; j <= n; j++ {
		lg, _ := math.Lgamma(float64(n + 1))
		l1, _ := math.Lgamma(float64(j + 1))
		l2, _ := math.Lgamma(float64(n - j + 1))
		sum += math.Exp(lg - l1 - l2 + float64(j)*math.Log(p) + float64(n-j)*math.Log1p(-p))
	}
	return sum
}

func TestFECOptionsChecked(t *testing.T) {
	for _, o := range []FECOption{
		WithFECTarget(0), WithFECTarget(1), WithFECMaxOverhead(0), WithFECMaxDepth(0),
		WithFECFlushDelay(0), WithFECMemory(10, 100), WithFECInitialLoss(1),
		WithFECFixedShape(FECShape{K: 65, M: 1, Depth: 1}), WithFECFixedShape(FECShape{K: 4, M: 33, Depth: 1}),
	} {
		if c, err := NewFECConn(loopbackUDP(t), o); err == nil {
			c.Close()
			t.Errorf("an option out of range was accepted: %+v", c.cfg)
		}
	}
}

// TestFECHidesTheSocket: quic-go must see a plain net.PacketConn, with no
// way to the socket for GSO, ECN or the don't-fragment bit, whose MTU
// probes would not count the framing.
func TestFECHidesTheSocket(t *testing.T) {
	var pc net.PacketConn = newFEC(t)
	if _, ok := pc.(quic.OOBCapablePacketConn); ok {
		t.Error("FECConn is an OOBCapablePacketConn")
	}
	if _, ok := pc.(interface {
		SyscallConn() (syscall.RawConn, error)
	}); ok {
		t.Error("FECConn exposes SyscallConn")
	}
}

// TestFECCloseEndsRead: Close ends a ReadFrom that waits and the timers,
// and may be repeated.
func TestFECCloseEndsRead(t *testing.T) {
	c, err := NewFECConn(loopbackUDP(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := c.ReadFrom(make([]byte, 2048))
		done <- err
	}()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadFrom after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// quicEcho serves QUIC on conn: every stream is echoed back.
func quicEcho(tb testing.TB, conn net.PacketConn) {
	tb.Helper()
	cert, err := LoadIdentity(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tr := &quic.Transport{Conn: conn}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"fec-test"}}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				for {
					st, err := c.AcceptStream(ctx)
					if err != nil {
						return
					}
					go func() {
						io.Copy(st, st)
						st.Close()
					}()
				}
			}()
		}
	}()
	tb.Cleanup(func() {
		cancel()
		ln.Close()
		tr.Close()
		<-done
	})
}

// quicEchoRoundTrip dials addr over conn, sends size seeded bytes on one
// stream and checks the echo.
func quicEchoRoundTrip(t *testing.T, conn net.PacketConn, addr net.Addr, size int) {
	t.Helper()
	tr := &quic.Transport{Conn: conn}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := tr.Dial(ctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"fec-test"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseWithError(0, "")
	st, err := c.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, size)
	rng := rand.New(rand.NewPCG(uint64(size), 2))
	for i := range msg {
		msg[i] = byte(rng.Uint32())
	}
	go func() {
		st.Write(msg)
		st.Close()
	}()
	got, err := io.ReadAll(st)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo of %d bytes: %d bytes back, equal %v, %v", size, len(got), bytes.Equal(got, msg), err)
	}
}

// TestFECCarriesQUIC runs QUIC over FEC on both ends, with no parity,
// with parity, and adapting.
func TestFECCarriesQUIC(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []FECOption
	}{
		{"m=0", []FECOption{WithFECFixedShape(FECShape{})}},
		{"k=16,m=4", []FECOption{WithFECFixedShape(FECShape{K: 16, M: 4, Depth: 1})}},
		{"k=8,m=2,depth=2", []FECOption{WithFECFixedShape(FECShape{K: 8, M: 2, Depth: 2})}},
		{"adaptive", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFEC(t, tc.opts...)
			quicEcho(t, srv)
			cli := newFEC(t, tc.opts...)
			quicEchoRoundTrip(t, cli, srv.LocalAddr(), 1<<20)
			s := cli.Stats()
			if s.DataSent == 0 || s.Malformed != 0 || s.Truncated != 0 {
				t.Fatalf("client stats %+v", s)
			}
			if (tc.name == "m=0") != (s.ParitySent == 0) {
				t.Fatalf("%d parity frames sent", s.ParitySent)
			}
		})
	}
}

// TestFECAcceptPlain: a server conn that accepts plain QUIC serves a plain
// client and an FEC client on one port.
func TestFECAcceptPlain(t *testing.T) {
	srv := newFEC(t, WithFECAcceptPlain(true))
	quicEcho(t, srv)
	quicEchoRoundTrip(t, loopbackUDP(t), srv.LocalAddr(), 64<<10)
	if s := srv.Stats(); s.Plain == 0 || s.DataReceived != 0 {
		t.Fatalf("after a plain client: %+v", s)
	}
	quicEchoRoundTrip(t, newFEC(t), srv.LocalAddr(), 64<<10)
	if s := srv.Stats(); s.DataReceived == 0 {
		t.Fatalf("after an FEC client: %+v", s)
	}
	// Without the option, plain QUIC is dropped: the handshake cannot
	// complete.
	strict := newFEC(t)
	src := loopbackUDP(t)
	src.WriteTo([]byte{0xc0, 0, 0, 0, 1}, strict.LocalAddr())
	src.WriteTo(appendFECData(nil, 1, 0, 0, 0, 0, []byte("x")), strict.LocalAddr())
	strict.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _, err := strict.ReadFrom(make([]byte, 100)); err != nil || n != 1 {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	if s := strict.Stats(); s.Plain != 1 {
		t.Fatalf("plain datagrams %d, want 1", s.Plain)
	}
}
