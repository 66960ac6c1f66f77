//go:build !race

// The goodput that FEC gains through loss, for QUIC alone and for a
// chunksync push. Both ends, the link and the FEC tunnels run in this
// process, and FEC costs CPU where the plain path waits on loss: under the
// race detector, beside the other packages' tests, the FEC side runs out
// of CPU before it runs out of link (2.9× where alone it gains 7–9×), and
// the ratio measures the machine. So these build without it (!race), and
// .ci/test runs them on their own; the FEC code itself runs under the race
// detector in fec_test.go and transport's tests.

package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// goodputRun is what quicGoodput measured.
type goodputRun struct {
	mbit float64
	quic quic.ConnectionStats // the client's
	up   LinkStats            // towards the server
	fec  transport.FECStats   // the client's, with FEC
}

func (r goodputRun) String() string {
	s := fmt.Sprintf("%.1f Mbit/s; QUIC declared %d of %d packets lost, cwnd %d B, srtt %v; link dropped %d (loss) + %d (queue) of %d datagrams",
		r.mbit, r.quic.PacketsLost, r.quic.PacketsSent, r.quic.CongestionWindow, r.quic.SmoothedRTT.Round(time.Millisecond),
		r.up.DroppedLoss, r.up.DroppedQueue, r.up.Received)
	if r.fec.DataSent > 0 {
		s += fmt.Sprintf("; %d parity frames for %d data (%.1f%% more bytes)", r.fec.ParitySent, r.fec.DataSent,
			100*(float64(r.fec.BytesSent)/float64(r.fec.PayloadBytesSent)-1))
	}
	return s
}

// quicGoodput writes on one QUIC stream through a link with profile p for
// window and returns the goodput: the bytes the server's application read,
// over the window (handshake excluded). With fec, both ends use FECConns
// made with opts; without, bare sockets.
func quicGoodput(t *testing.T, p TransferProfile, seed uint64, window time.Duration, fec bool, opts ...transport.FECOption) goodputRun {
	t.Helper()
	cert, err := transport.LoadIdentity(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var srvConn, cliConn net.PacketConn = listenUDP(t), listenUDP(t)
	var cliFEC *transport.FECConn
	if fec {
		srvConn = fecConn(t, opts...)
		cliFEC = fecConn(t, opts...)
		cliConn = cliFEC
	}
	cfg, err := p.Link(seed)
	if err != nil {
		t.Fatal(err)
	}
	l := runLink(t, srvConn.LocalAddr().String(), cfg)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	srvTr := &quic.Transport{Conn: srvConn}
	defer srvTr.Close()
	ln, err := srvTr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{rawALPN}}, rawQUICConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var received atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		defer c.CloseWithError(0, "")
		st, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		buf := make([]byte, 64<<10)
		for {
			n, err := st.Read(buf)
			received.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	cliTr := &quic.Transport{Conn: cliConn}
	defer cliTr.Close()
	c, err := cliTr.Dial(ctx, l.Addr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{rawALPN}}, rawQUICConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseWithError(0, "")
	st, err := c.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, window)
	defer wcancel()
	stop := context.AfterFunc(wctx, func() { st.CancelWrite(0) })
	defer stop()
	start := time.Now()
	buf := make([]byte, 64<<10)
	for wctx.Err() == nil {
		if _, err := st.Write(buf); err != nil {
			break
		}
	}
	r := goodputRun{mbit: float64(received.Load()) * 8 / time.Since(start).Seconds() / 1e6, quic: c.ConnectionStats()}
	r.up, _ = l.Stats()
	if cliFEC != nil {
		r.fec = cliFEC.Stats()
	}
	return r
}

// fecGoodputGain is the least goodput gain from FEC that the goodput tests
// accept. Measured on 2 shared cores through 200 Mbit/s, 20ms and 1% loss,
// without the race detector, three runs: raw QUIC 12.7–14.8× (the link's
// rate and the parity are the limit), a chunksync push 9.9–15×. 3× leaves
// three times the margin of the worst of these.
const fecGoodputGain = 3

// TestFECQUICGoodput: one QUIC connection through 200 Mbit/s, 20ms round
// trip and 1% random loss each way, for 2 seconds with and 2 seconds
// without FEC.
func TestFECQUICGoodput(t *testing.T) {
	p := TransferProfile{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: 0.01}
	bare := quicGoodput(t, p, 1, 2*time.Second, false)
	fec := quicGoodput(t, p, 1, 2*time.Second, true)
	t.Logf("%s without FEC: %v", p, bare)
	t.Logf("%s with FEC:    %v", p, fec)
	t.Logf("gain %.1f×", fec.mbit/bare.mbit)
	if fec.mbit < fecGoodputGain*bare.mbit {
		t.Errorf("FEC moved %.1f Mbit/s, without %.1f: want at least %d× as much", fec.mbit, bare.mbit, fecGoodputGain)
	}
}

// fecTunnel relays datagrams between a plain UDP socket and a FECConn, so
// that a chunksync client and server, which make their own sockets, can
// be tested over FEC: client → [plain | FEC] → link → [FEC | plain] →
// server. It serves one client.
type fecTunnel struct {
	plain *net.UDPConn
	fec   *transport.FECConn
	// to is where FEC datagrams go (the link), or, when nil, the address
	// FEC datagrams last came from.
	to net.Addr
	// back is where datagrams from FEC go on the plain side: the server
	// (a connected socket), or, when nil, the client last heard from.
	back      net.Addr
	mu        sync.Mutex
	client    net.Addr
	fecPeer   net.Addr
	connected bool
}

// startFECTunnel runs t's two relays until the test ends.
func startFECTunnel(tb testing.TB, tun *fecTunnel) {
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := tun.plain.ReadFrom(buf)
			if err != nil {
				return
			}
			tun.mu.Lock()
			to := tun.to
			if !tun.connected {
				tun.client = from
			}
			if to == nil {
				to = tun.fecPeer
			}
			tun.mu.Unlock()
			if to != nil {
				tun.fec.WriteTo(buf[:n], to)
			}
		}
	})
	wg.Go(func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := tun.fec.ReadFrom(buf)
			if err != nil {
				return
			}
			tun.mu.Lock()
			tun.fecPeer = from
			client := tun.client
			tun.mu.Unlock()
			switch {
			case tun.connected:
				tun.plain.Write(buf[:n])
			case client != nil:
				tun.plain.WriteTo(buf[:n], client)
			}
		}
	})
	tb.Cleanup(func() {
		tun.plain.Close()
		tun.fec.Close()
		wg.Wait()
	})
}

// pushGoodput pushes file to a new chunksync server through a link with
// profile p, over FEC tunnels with fec, for at most window, and returns
// the goodput of what was stored (the whole file when it completes).
func pushGoodput(t *testing.T, file string, p TransferProfile, window time.Duration, fec bool) (float64, bool) {
	t.Helper()
	s := startTestServer(t)
	cfg, err := p.Link(5)
	if err != nil {
		t.Fatal(err)
	}
	addr := s.srv.Addr().String()
	var inner *fecTunnel
	if fec {
		// The server's end: FEC from the link, plain to the server.
		srvSide, err := net.DialUDP("udp", nil, s.srv.Addr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		inner = &fecTunnel{plain: srvSide, fec: fecConn(t), connected: true}
		startFECTunnel(t, inner)
		addr = inner.fec.LocalAddr().String()
	}
	l := runLink(t, addr, cfg)
	addr = l.Addr().String()
	if fec {
		// The client's end: plain from the client, FEC to the link.
		outer := &fecTunnel{plain: listenUDP(t), fec: fecConn(t), to: l.Addr()}
		startFECTunnel(t, outer)
		addr = outer.plain.LocalAddr().String()
	}
	ctx, cancel := context.WithTimeout(t.Context(), window)
	defer cancel()
	start := time.Now()
	// One connection, and no FEC of the client's own: the baseline is one
	// plain connection, and the tunnels are the only FEC.
	c, err := transport.Dial(ctx, transport.ClientConfig{Addr: addr, Token: s.token, Fingerprint: s.srv.Fingerprint(), Conns: 1, FEC: transport.FECOff})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Small chunks, so that the goodput of a push cut short counts more
	// than the few chunks that 8 streams of 1 MiB would complete.
	chunker := engine.ChunkerParams{Name: "fixed", Min: 64 << 10, Avg: 64 << 10, Max: 64 << 10}
	counter := &stageCounter{count: []engine.Stage{engine.StageStored, engine.StagePresent}}
	_, err = engine.Push(ctx, c, file, "f", engine.PushOptions{Chunker: chunker, Raw: true, Progress: counter})
	if err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}
	return goodput(counter.bytes.Load(), time.Since(start).Seconds()), err == nil
}

// TestFECPushGoodput: a chunksync push, connection included, through the
// same link as TestFECQUICGoodput, without FEC and through FEC tunnels,
// 3 seconds at most each.
func TestFECPushGoodput(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := WriteRandomFile(file, 48<<20, 1); err != nil {
		t.Fatal(err)
	}
	p := TransferProfile{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: 0.01}
	bare, bareDone := pushGoodput(t, file, p, 3*time.Second, false)
	fec, fecDone := pushGoodput(t, file, p, 3*time.Second, true)
	t.Logf("%s: push without FEC %.1f Mbit/s (complete %v), through FEC tunnels %.1f Mbit/s (complete %v): %.1f×",
		p, bare, bareDone, fec, fecDone, fec/bare)
	if fec < fecGoodputGain*bare {
		t.Errorf("FEC pushed %.1f Mbit/s, without %.1f: want at least %d× as much", fec, bare, fecGoodputGain)
	}
	os.Remove(file)
}
