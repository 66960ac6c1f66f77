package bench

import (
	"context"
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
