package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// TestLinkStampsArrivals: datagrams that wait in the link's socket before
// it reads them keep the times they arrived. Sixty datagrams come at half
// the link's rate before the link starts serving, so they are read in one
// burst; a link that took them as arriving when read would see sixty at
// once and its eight-datagram queue would drop most of them, while at the
// times they arrived the queue never holds more than one.
func TestLinkStampsArrivals(t *testing.T) {
	const rate, queue, size, n = 8e6, 8000, 1000, 60
	gap := 2 * time.Duration(size*8/rate*1e9) // half the rate
	waitForStamps(t)
	sink := listenUDP(t)
	l, err := ListenLink("127.0.0.1:0", sink.LocalAddr().String(), LinkConfig{Up: LinkProfile{Rate: rate, Queue: queue}})
	if err != nil {
		t.Fatal(err)
	}
	send := dialUDP(t, l.Addr())
	b := make([]byte, size)
	for range n {
		if _, err := send.Write(b); err != nil {
			t.Fatal(err)
		}
		time.Sleep(gap)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("link serve: %v", err)
		}
	}()
	got := 0
	sink.SetReadDeadline(time.Now().Add(5 * time.Second))
	for got < n {
		if _, err := sink.Read(b); err != nil {
			break
		}
		got++
	}
	st, _ := l.Stats()
	t.Logf("%d datagrams sent %v apart before the link read them: %d delivered, stats %+v", n, gap, got, st)
	if got != n || st.DroppedQueue != 0 {
		t.Errorf("%d of %d delivered, %d dropped by the queue: the link took the datagrams that waited for it as a burst", got, n, st.DroppedQueue)
	}
}

// waitForStamps returns once the kernel stamps datagrams as they arrive.
// It turns stamping on for the whole system when the first socket asks for
// it, but some time later: until then it stamps a datagram when it is read.
func waitForStamps(t *testing.T) {
	r := listenUDP(t)
	if err := tuneLinkSocket(r); err != nil {
		t.Fatal(err)
	}
	w := dialUDP(t, r.LocalAddr())
	buf, oob := make([]byte, 16), make([]byte, linkControlSpace)
	for range 100 {
		if _, err := w.Write(buf); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		_, oobn, _, _, err := r.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		if lag, _ := readControl(oob[:oobn]); lag >= 5*time.Millisecond {
			return
		}
	}
	t.Fatal("the kernel does not stamp datagrams as they arrive")
}

// TestLinkSocketSegments: on the link's sockets a burst written as one
// segmented datagram arrives in one read that says its segments' size
// and stamps its arrival.
func TestLinkSocketSegments(t *testing.T) {
	r := listenUDP(t)
	if err := tuneLinkSocket(r); err != nil {
		t.Fatal(err)
	}
	w := dialUDP(t, r.LocalAddr())
	waitForStamps(t)
	const size, n = 1000, 10
	burst := make([]byte, size*(n-1)+size/2)
	for i := range burst {
		burst[i] = byte(i / size)
	}
	if err := writeSegments(w, burst, size, netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	buf, oob := make([]byte, maxDatagram), make([]byte, linkControlSpace)
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, oobn, _, _, err := r.ReadMsgUDPAddrPort(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	lag, segment := readControl(oob[:oobn])
	t.Logf("read %d bytes in segments of %d, arrived %v before the read", got, segment, lag)
	if got != len(burst) || segment != size || !bytes.Equal(buf[:got], burst) {
		t.Errorf("read %d bytes in segments of %d, want the %d-byte burst in segments of %d", got, segment, len(burst), size)
	}
	if lag < 15*time.Millisecond || lag > maxArrivalLag {
		t.Errorf("arrived %v before it was read, want about 20 ms", lag)
	}
}

// TestLinkRelaysBursts: bursts that cross the link in segmented reads and
// writes arrive as the datagrams they were, whole, whatever their sizes;
// so they do when the kernel refuses segmented writes and the link writes
// each datagram on its own.
func TestLinkRelaysBursts(t *testing.T) {
	t.Run("segmented", relayBursts)
	t.Run("one write each", func(t *testing.T) {
		noSegmenting.Store(true)
		defer noSegmenting.Store(false)
		relayBursts(t)
	})
}

func relayBursts(t *testing.T) {
	sink := listenUDP(t)
	l := runLink(t, sink.LocalAddr().String(), LinkConfig{Up: LinkProfile{Delay: 5 * time.Millisecond, Rate: 1e9}})
	send := dialUDP(t, l.Addr())
	// Bursts of equal datagrams with a shorter last one, single ones, and
	// sizes that change from one datagram to the next.
	var want [][]byte
	sizes := []int{1400, 1400, 1400, 1400, 700, 1200, 1200, 2, 1500, 1400, 1400, 1400, 1400, 1400, 1400, 1400, 1400}
	for round := range 40 {
		var burst []byte
		segment := sizes[0]
		for i, size := range sizes {
			d := make([]byte, size)
			for j := range d {
				d[j] = byte(round*len(sizes) + i + j)
			}
			binary.BigEndian.PutUint16(d, uint16(len(want)))
			want = append(want, d)
			if i < 5 {
				burst = append(burst, d...)
				continue
			}
			if _, err := send.Write(d); err != nil {
				t.Fatal(err)
			}
		}
		if err := writeSegments(send, burst, segment, netip.AddrPort{}); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, maxDatagram)
	sink.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got [][]byte
	for len(got) < len(want) {
		n, err := sink.Read(buf)
		if err != nil {
			break
		}
		got = append(got, bytes.Clone(buf[:n]))
	}
	// The link counts a write once it returns, which may be after the
	// sink has read it.
	st, _ := l.Stats()
	for wait := time.Now().Add(2 * time.Second); st.Delivered < st.Received && time.Now().Before(wait); st, _ = l.Stats() {
		time.Sleep(time.Millisecond)
	}
	t.Logf("%d datagrams sent, %d arrived; stats %+v", len(want), len(got), st)
	if st.Received != uint64(len(want)) || st.Delivered != uint64(len(want)) {
		t.Errorf("link received %d and delivered %d datagrams, want %d", st.Received, st.Delivered, len(want))
	}
	// The bursts were written after the single ones of their round, so
	// compare by the number each datagram carries.
	seen := make(map[uint16]bool)
	for _, d := range got {
		if len(d) < 2 {
			continue
		}
		k := binary.BigEndian.Uint16(d)
		if int(k) >= len(want) || !bytes.Equal(d, want[k]) || seen[k] {
			t.Fatalf("datagram %d arrived as %d bytes unlike the %d sent, or twice", k, len(d), len(want[min(int(k), len(want)-1)]))
		}
		seen[k] = true
	}
	if len(got) != len(want) {
		t.Errorf("%d of %d datagrams arrived", len(got), len(want))
	}
}
