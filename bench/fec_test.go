package bench

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/chunksync/chunksync/transport"
)

// The tests of transport.FECConn that need the link emulator: the loss
// left after repair, the sender's adaptation, and what FEC costs on
// loopback (what it does for goodput is in fec_goodput_test.go).
// transport cannot import bench, so they live here.

// fecConn wraps a new loopback socket in a FECConn.
func fecConn(tb testing.TB, opts ...transport.FECOption) *transport.FECConn {
	tb.Helper()
	c, err := transport.NewFECConn(listenUDP(tb), opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// drainFEC reads c until it is closed, passing every datagram to fn (which
// may be nil), and returns a channel closed when it stops.
func drainFEC(c *transport.FECConn, fn func([]byte)) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if fn != nil {
				fn(buf[:n])
			}
		}
	}()
	return done
}

// fecFlow is a sender and a receiver FECConn with a link from the first to
// the second; the loss reports cross it backwards.
type fecFlow struct {
	send, recv *transport.FECConn
	link       *Link
}

func startFECFlow(t *testing.T, p LinkProfile, seed uint64, opts ...transport.FECOption) *fecFlow {
	t.Helper()
	recv := fecConn(t, opts...)
	send := fecConn(t, opts...)
	l := runLink(t, recv.LocalAddr().String(), LinkConfig{Up: p, Down: p, Seed: seed})
	// The sender learns the loss from the reports it reads, as quic-go
	// would read them.
	drained := drainFEC(send, nil)
	t.Cleanup(func() {
		send.Close()
		<-drained
	})
	return &fecFlow{send: send, recv: recv, link: l}
}

// pace sends, from f's sender, datagrams of size bytes (the first 4 their
// number) at rate a second, in bursts of 10, until n are sent or stop is
// closed; a loopback socket drops what a sender pushes much faster than
// its receiver reads.
func (f *fecFlow) pace(n, size, rate int, stop <-chan struct{}) error {
	tick := time.NewTicker(time.Duration(10 * float64(time.Second) / float64(rate)))
	defer tick.Stop()
	msg := make([]byte, size)
	for i := 0; n < 0 || i < n; i++ {
		if i%10 == 0 {
			select {
			case <-tick.C:
			case <-stop:
				return nil
			}
		}
		binary.BigEndian.PutUint32(msg, uint32(i))
		if _, err := f.send.WriteTo(msg, f.link.Addr()); err != nil {
			return err
		}
	}
	return nil
}

// fecResidual sends n numbered datagrams through a link with profile p
// both ways at rate a second, and returns the share of them that never
// reached the receiver's application, and the share of the datagrams the
// link dropped on the way.
func fecResidual(t *testing.T, p LinkProfile, seed uint64, n, rate int, opts ...transport.FECOption) (residual, raw float64, rs transport.FECStats) {
	t.Helper()
	f := startFECFlow(t, p, seed, opts...)
	sent := make(chan error, 1)
	go func() { sent <- f.pace(n, 1200, rate, nil) }()
	got := make([]bool, n)
	arrived := 0
	buf := make([]byte, 2048)
	done := false
	giveUp := time.Now().Add(time.Minute)
	for arrived < n {
		// Once the sender is done, the last parity goes out within the
		// flush delay: half a second of silence then means nothing more
		// is coming.
		f.recv.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		k, _, err := f.recv.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatal(err)
			}
			if done {
				break
			}
			select {
			case err := <-sent:
				if err != nil {
					t.Fatal(err)
				}
				done = true
			default:
				if time.Now().After(giveUp) {
					t.Fatal("the sender is stuck")
				}
			}
			continue
		}
		if k != 1200 {
			t.Fatalf("datagram of %d bytes, want 1200", k)
		}
		if i := binary.BigEndian.Uint32(buf); !got[i] {
			got[i] = true
			arrived++
		}
	}
	if !done {
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
	}
	up, _ := f.link.Stats()
	return float64(n-arrived) / float64(n), float64(up.DroppedLoss+up.DroppedQueue) / float64(up.Received), f.recv.Stats()
}

// TestFECResidualLoss measures the loss left after repair on links that
// lose 1% and 5% of the datagrams at random, with the sender adapting
// from its first report on (it starts out assuming 1%).
func TestFECResidualLoss(t *testing.T) {
	const n = 20000
	for _, tc := range []struct {
		loss float64
		// most is the residual loss allowed: a twentieth of the raw loss.
		// The target of 1e-4 should leave about 2 datagrams of 20000 lost,
		// but the first 100ms are protected for 1% only.
		most float64
	}{
		{0.01, 0.0005},
		{0.05, 0.0025},
	} {
		t.Run(fmt.Sprintf("loss=%g", tc.loss), func(t *testing.T) {
			residual, raw, rs := fecResidual(t, LinkProfile{Loss: tc.loss}, 7, n, 10000)
			t.Logf("raw loss %.4f, residual %.5f (%d of %d datagrams); %d rebuilt, %d parity frames for %d data",
				raw, residual, int(residual*n+0.5), n, rs.Recovered, rs.ParityReceived, rs.DataReceived)
			if residual > tc.most {
				t.Errorf("residual loss %.5f, want at most %.5f", residual, tc.most)
			}
		})
	}
}

// TestFECBurstLoss measures, on a link that loses 2% in bursts of 8
// datagrams on average (Gilbert–Elliott), the loss left by one group of
// 48+12 against 8 interleaved groups of 8+2: the same 25% of parity.
func TestFECBurstLoss(t *testing.T) {
	ge, err := BurstLoss(0.02, 8)
	if err != nil {
		t.Fatal(err)
	}
	const n = 30000
	res := map[int]float64{}
	for _, shape := range []transport.FECShape{{K: 48, M: 12, Depth: 1}, {K: 8, M: 2, Depth: 8}} {
		// A long flush delay: every block fills up, whatever the pace.
		residual, raw, _ := fecResidual(t, LinkProfile{Burst: ge}, 9, n, 20000,
			transport.WithFECFixedShape(shape), transport.WithFECFlushDelay(50*time.Millisecond))
		t.Logf("%+v: raw loss %.4f, residual %.5f", shape, raw, residual)
		if residual > raw*3/4 {
			t.Errorf("%+v: residual %.5f of raw %.4f", shape, residual, raw)
		}
		res[shape.Depth] = residual
	}
	t.Logf("interleaving 8 groups leaves %.2f of what one group leaves", res[8]/res[1])
}

// TestFECAdaptsToLoss: the sender stops sending parity on a clean link
// and sends more for more loss.
func TestFECAdaptsToLoss(t *testing.T) {
	shapeAfter := func(t *testing.T, loss float64, done func(transport.FECReport, int) bool) transport.FECReport {
		reports := make(chan transport.FECReport, 100)
		f := startFECFlow(t, LinkProfile{Loss: loss}, 3, transport.WithFECObserver(func(r transport.FECReport) {
			select {
			case reports <- r:
			default:
			}
		}))
		stop := make(chan struct{})
		sent := make(chan error, 1)
		go func() { sent <- f.pace(-1, 1200, 5000, stop) }()
		drained := drainFEC(f.recv, nil)
		defer func() {
			close(stop)
			if err := <-sent; err != nil {
				t.Error(err)
			}
			f.recv.Close()
			<-drained
		}()
		timeout := time.After(20 * time.Second)
		for i := 1; ; i++ {
			select {
			case r := <-reports:
				if done(r, i) {
					t.Logf("loss %g, report %d: measured %.4f, shape %+v, overhead %.3f, residual %.2g", loss, i, r.Loss, r.Shape, r.Shape.Overhead(), r.Residual)
					return r
				}
			case <-timeout:
				t.Fatalf("loss %g: no decision after %d reports", loss, i-1)
			}
		}
	}
	// Clean: from the initial guess of 1% down to no parity, once three
	// reports in a row agree.
	shapeAfter(t, 0, func(r transport.FECReport, _ int) bool { return r.Shape.M == 0 })
	// Lossy: the shape after a second of reports.
	enough := func(r transport.FECReport, i int) bool { return i >= 10 }
	one := shapeAfter(t, 0.01, enough)
	five := shapeAfter(t, 0.05, enough)
	if one.Shape.M == 0 || five.Shape.Overhead() <= one.Shape.Overhead() {
		t.Errorf("1%%: %+v; 5%%: %+v", one.Shape, five.Shape)
	}
}

// quicTransfer sends size bytes on one QUIC stream from cli to a raw QUIC
// sink on srv, both loopback, and returns the time from the stream's
// opening to the sink's confirmation that all arrived.
func quicTransfer(tb testing.TB, srv, cli net.PacketConn, size int64) time.Duration {
	tb.Helper()
	cert, err := transport.LoadIdentity(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	sink, err := NewRawQUICSink(srv, cert)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { sink.Serve(ctx) })
	cliTr := &quic.Transport{Conn: cli}
	defer cliTr.Close()
	c, err := cliTr.Dial(ctx, srv.LocalAddr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{rawALPN}}, rawQUICConfig())
	if err != nil {
		tb.Fatal(err)
	}
	defer c.CloseWithError(0, "")
	took, err := SendRawQUICOn(ctx, c, size, make([]byte, 64<<10))
	if err != nil {
		tb.Fatal(err)
	}
	return took
}

// BenchmarkFECLoopback measures what FECConn costs on a clean loopback
// path: QUIC over bare sockets (with quic-go's GSO and batched reads),
// over FECConns with the header only (m=0), with fixed parity, and
// adapting (it starts out with parity for 1% loss and drops it after a
// few reports); each iteration moves 64 MiB over each, and the ratios
// to bare sockets come from the same run.
func BenchmarkFECLoopback(b *testing.B) {
	const size = 64 << 20
	fecPair := func(opts ...transport.FECOption) func(testing.TB) (net.PacketConn, net.PacketConn) {
		return func(tb testing.TB) (net.PacketConn, net.PacketConn) {
			return fecConn(tb, opts...), fecConn(tb, opts...)
		}
	}
	configs := []struct {
		name  string
		conns func(testing.TB) (net.PacketConn, net.PacketConn)
	}{
		{"bare", func(tb testing.TB) (net.PacketConn, net.PacketConn) { return listenUDP(tb), listenUDP(tb) }},
		{"m=0", fecPair(transport.WithFECFixedShape(transport.FECShape{}))},
		{"32+2", fecPair(transport.WithFECFixedShape(transport.FECShape{K: 32, M: 2, Depth: 1}))},
		{"32+8", fecPair(transport.WithFECFixedShape(transport.FECShape{K: 32, M: 8, Depth: 1}))},
		{"adaptive", fecPair()},
	}
	took := make([]time.Duration, len(configs))
	b.SetBytes(size * int64(len(configs)))
	b.ReportAllocs()
	for b.Loop() {
		for i, c := range configs {
			srv, cli := c.conns(b)
			took[i] += quicTransfer(b, srv, cli, size)
		}
	}
	for i, c := range configs {
		b.ReportMetric(float64(size)*8*float64(b.N)/took[i].Seconds()/1e6, c.name+"-Mbit/s")
		if i > 0 {
			b.ReportMetric(took[0].Seconds()/took[i].Seconds(), c.name+"/bare")
		}
	}
}
