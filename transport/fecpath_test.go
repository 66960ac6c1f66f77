package transport

import (
	"errors"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/chunksync/chunksync/engine"
)

// TestFECNegotiation: what a client learns from the hello of servers with
// and without a FEC port, that a push works against each, and that FECOn
// is refused where there is no FEC port. (That automatic mode moves to the
// FEC port under loss is bench's TestTransferFECOnALossyLink: it needs the
// link emulator.)
func TestFECNegotiation(t *testing.T) {
	for _, c := range []struct {
		name    string
		srv     ServerConfig
		mode    FECMode
		fec     bool   // the server has a FEC port
		version uint32 // the version the client ends up speaking
	}{
		{"default", ServerConfig{}, FECAuto, true, 3},
		{"server without FEC port", ServerConfig{FECListen: NoFEC}, FECAuto, false, 3},
		{"server before version 2", ServerConfig{version: 1}, FECAuto, false, 1},
		{"client with FEC off", ServerConfig{}, FECOff, true, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := startServer(t, c.srv)
			if got := ts.FECAddr() != nil; got != c.fec {
				t.Fatalf("server FEC port %v, want one: %v", ts.FECAddr(), c.fec)
			}
			cl, err := ts.dial(t, func(cfg *ClientConfig) { cfg.FEC = c.mode })
			if err != nil {
				t.Fatal(err)
			}
			// Loopback may lose packets on a loaded machine, but never
			// so many that FEC would pay (lossLimited). The push's first
			// request brings the hello's reply.
			push(t, cl, writeFile(t, 1<<20, 41), "f.bin")
			if st := cl.Stats(); st.FECConnections != 0 {
				t.Errorf("%d connections over FEC on loopback in mode %v", st.FECConnections, c.mode)
			}
			wantPort := c.fec && c.mode != FECOff
			switch got := cl.fecAddr.Load(); {
			case (got != nil) != wantPort:
				t.Errorf("client's FEC address %v, want one: %v", got, wantPort)
			case got != nil && got.Port != ts.FECAddr().(*net.UDPAddr).Port:
				t.Errorf("client's FEC address %v, server's FEC port %v", got, ts.FECAddr())
			}
			if got := cl.version.Load(); got != c.version {
				t.Errorf("client speaks protocol version %d, want %d", got, c.version)
			}
			_, err = ts.dial(t, func(cfg *ClientConfig) { cfg.FEC = FECOn })
			if c.fec && err != nil || !c.fec && !errors.Is(err, ErrNoFEC) {
				t.Errorf("FECOn: %v", err)
			}
		})
	}
}

// TestFECForcedOn: with FECOn, a push and a pull move their chunks over
// FEC connections to the FEC port, and control requests stay on the
// plain connection.
func TestFECForcedOn(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.FEC, cfg.Streams = FECOn, 4 })
	if err != nil {
		t.Fatal(err)
	}
	res := push(t, c, writeFile(t, 4<<20, 42), "f.bin")
	dst := filepath.Join(t.TempDir(), "f.bin")
	if _, err := engine.Pull(t.Context(), c, res.Manifest, dst, engine.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	if st.FECConnections < 1 || st.FECConnections == st.Connections {
		t.Errorf("%d connections, %d over FEC: want the data over FEC and the control requests plain", st.Connections, st.FECConnections)
	}
	fs := ts.fec.Stats()
	if fs.DataReceived < (4<<20)/1500 || fs.DataSent < (4<<20)/1500 {
		t.Errorf("server's FEC port received %d and sent %d data frames for a 4 MiB push and pull", fs.DataReceived, fs.DataSent)
	}
}

// TestLossSeries: losses count as random when they keep coming without a
// queue, not when they come in a burst or with the round trip swollen.
func TestLossSeries(t *testing.T) {
	conn := new(quic.Conn)
	for _, c := range []struct {
		name   string
		minRTT time.Duration
		lost   []uint64 // the loss count at each look
		srtt   []time.Duration
		want   bool
	}{
		{"random", 20, []uint64{1, 2, 3, 4, 5, 6}, []time.Duration{21, 21, 22, 21, 21, 21}, true},
		{"too few looks with loss", 20, []uint64{10, 20, 20, 20, 30, 40}, []time.Duration{21, 21, 21, 21, 21, 21}, false},
		{"queue", 20, []uint64{1, 2, 3, 4, 5, 6}, []time.Duration{60, 45, 26, 70, 50, 27}, false},
		{"queue at times", 20, []uint64{1, 2, 3, 4, 5, 6, 7, 8}, []time.Duration{21, 45, 31, 21, 21, 21, 21, 21}, true},
		{"random on a long path", 200, []uint64{1, 2, 3, 4, 5, 6}, []time.Duration{201, 203, 202, 205, 201, 202}, true},
		{"queue on a long path", 200, []uint64{1, 2, 3, 4, 5, 6}, []time.Duration{216, 228, 203, 222, 201, 219}, false},
		{"queue on a short path", 2, []uint64{1, 2, 3, 4, 5, 6}, []time.Duration{3, 5, 4, 6, 2, 5}, false},
		// Sixteen connections through 400 Mbit/s and 200 ms: losses
		// while slow start overfills the queue, then a long run of looks
		// without loss or queue.
		{"queue in slow start, then none", 200,
			append([]uint64{0, 0, 34, 40, 236, 337, 337, 350, 369}, slices.Repeat([]uint64{369}, 60)...),
			append([]time.Duration{201, 201, 248, 231, 252, 237, 215, 256, 228}, slices.Repeat([]time.Duration{205}, 60)...), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var s lossSeries
			got := false
			for i, lost := range c.lost {
				got = s.random(conn, quic.ConnectionStats{PacketsLost: lost, MinRTT: c.minRTT * time.Millisecond, SmoothedRTT: c.srtt[i] * time.Millisecond})
			}
			if got != c.want {
				t.Errorf("random %v, want %v", got, c.want)
			}
		})
	}
}

// TestLossLimited: FEC pays on long paths that lose, not on short ones.
func TestLossLimited(t *testing.T) {
	for _, c := range []struct {
		sent, lost uint64
		srtt       time.Duration
		want       bool
	}{
		{10000, 100, 20 * time.Millisecond, true},   // 1% at 20 ms: about 10 Mbit/s
		{10000, 5, 20 * time.Millisecond, true},     // 0.05% at 20 ms: about 43 Mbit/s
		{10000, 100, 200 * time.Microsecond, false}, // 1% on loopback: about 600 Mbit/s
		{10000, 0, 20 * time.Millisecond, false},
	} {
		st := quic.ConnectionStats{PacketsSent: c.sent, PacketsLost: c.lost, SmoothedRTT: c.srtt}
		if got := lossLimited(st); got != c.want {
			t.Errorf("%d of %d lost at %v: loss-limited %v, want %v", c.lost, c.sent, c.srtt, got, c.want)
		}
	}
}

func TestParseFECMode(t *testing.T) {
	for _, m := range []FECMode{FECAuto, FECOn, FECOff} {
		if got, err := ParseFECMode(m.String()); err != nil || got != m {
			t.Errorf("ParseFECMode(%q) = %v, %v", m, got, err)
		}
	}
	if _, err := ParseFECMode("yes"); err == nil {
		t.Error("ParseFECMode(yes) worked")
	}
}
