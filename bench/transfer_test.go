package bench

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// transferFile writes size seeded random bytes to a new file.
func transferFile(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data.bin")
	if err := WriteRandomFile(path, size, 11); err != nil {
		t.Fatal(err)
	}
	return path
}

func defaultCDC(t *testing.T) engine.ChunkerParams {
	t.Helper()
	k, err := engine.LookupChunker(engine.DefaultCDC)
	if err != nil {
		t.Fatal(err)
	}
	return k.Defaults
}

func TestTransferProfileNames(t *testing.T) {
	for _, c := range []struct {
		p    TransferProfile
		want string
	}{
		{TransferProfile{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: 0.01}, "200mbit 20ms 1%"},
		{TransferProfile{Rate: 1e9, RTT: 2 * time.Millisecond}, "1gbit 2ms 0%"},
		{TransferProfile{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: 0.05, Burst: 4}, "200mbit 20ms 5% burst 4"},
		{TransferProfile{}, "off 0s 0%"},
	} {
		if got := c.p.String(); got != c.want {
			t.Errorf("%+v named %q, want %q", c.p, got, c.want)
		}
	}
	if _, err := (TransferProfile{Loss: 1.5}).Link(1); err == nil || !strings.Contains(err.Error(), "Loss") {
		t.Errorf("a loss of 150%%: %v, want an error naming Loss", err)
	}
}

// TestTransferLossless pushes and pulls through a rate-limited link with a
// round trip: both complete, move the whole file, and take at least the
// time the rate allows.
func TestTransferLossless(t *testing.T) {
	const size = 4 << 20
	p := TransferProfile{Rate: 100e6, RTT: 10 * time.Millisecond}
	res, err := RunTransfer(context.Background(), t.TempDir(), TransferSpec{
		File: transferFile(t, size), Profile: p, Chunker: defaultCDC(t), Pull: true, Seed: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Direction != "push" || res[1].Direction != "pull" {
		t.Fatalf("results %+v, want a push and a pull", res)
	}
	least := float64(size*8) / float64(p.Rate)
	for _, r := range res {
		t.Logf("%s: %.2f s, %.1f Mbit/s, %d sent, %d received, %.2f CPU s", r.Direction, r.Seconds, r.GoodputMbit, r.WireBytesSent, r.WireBytesReceived, r.CPUSeconds)
		if !r.Complete || r.Error != "" || r.Moved != size {
			t.Errorf("%s: complete %v, moved %d of %d: %s", r.Direction, r.Complete, r.Moved, size, r.Error)
		}
		if r.Seconds < least || r.GoodputMbit > float64(p.Rate)/1e6 {
			t.Errorf("%s: %.3f s, %.1f Mbit/s over a %s link: faster than the link", r.Direction, r.Seconds, r.GoodputMbit, p)
		}
		if r.CPUSeconds <= 0 || r.Profile != p.String() || r.Tool != "chunksync" {
			t.Errorf("%s: %+v", r.Direction, r)
		}
	}
	// Random data: the file itself crosses the wire, each way once.
	if res[0].WireBytesSent < size || res[1].WireBytesReceived < size {
		t.Errorf("push sent %d, pull received %d bytes of a %d-byte file", res[0].WireBytesSent, res[1].WireBytesReceived, size)
	}
}

// TestTransferLossy: a link that drops and bursts still delivers a
// verified file, and the drops are counted.
func TestTransferLossy(t *testing.T) {
	const size = 1 << 20
	p := TransferProfile{Rate: 100e6, RTT: 4 * time.Millisecond, Loss: 0.05, Burst: 3}
	res, err := RunTransfer(context.Background(), t.TempDir(), TransferSpec{
		File: transferFile(t, size), Profile: p, Chunker: defaultCDC(t), Pull: true, Seed: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	var lost uint64
	for _, r := range res {
		if !r.Complete || r.Moved != size {
			t.Errorf("%s over %s: complete %v, moved %d: %s", r.Direction, p, r.Complete, r.Moved, r.Error)
		}
		lost += r.DatagramsLost
	}
	if len(res) != 2 || lost == 0 {
		t.Errorf("%d results, %d datagrams lost over a link losing 5%%", len(res), lost)
	}
}

// TestTransferTimesOut: a run that cannot finish in time is reported
// incomplete, with the goodput of what arrived.
func TestTransferTimesOut(t *testing.T) {
	const size = 4 << 20
	p := TransferProfile{Rate: 4e6, RTT: 2 * time.Millisecond}
	res, err := RunTransfer(context.Background(), t.TempDir(), TransferSpec{
		File: transferFile(t, size), Profile: p, Chunker: defaultCDC(t), Pull: true, Timeout: time.Second, Seed: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 {
		t.Fatalf("%d results, want the push alone: a pull needs a finished push", len(res))
	}
	r := res[0]
	t.Logf("push over %s in %.2f s: moved %d, %.2f Mbit/s: %s", p, r.Seconds, r.Moved, r.GoodputMbit, r.Error)
	if r.Complete || !strings.Contains(r.Error, "timed out") || r.Moved >= size {
		t.Errorf("push of %d bytes at 4 Mbit/s in 1 s: complete %v, moved %d, error %q", size, r.Complete, r.Moved, r.Error)
	}
	if r.GoodputMbit > 4 {
		t.Errorf("goodput %.2f Mbit/s over a 4 Mbit/s link", r.GoodputMbit)
	}
}

// TestTransferSpreadsOnALossyLink: left to decide, without FEC, a push
// over a link that loses packets spreads its streams over a connection
// each. (That it keeps to one on a clean link is transport's TestLossy: a
// loaded machine makes loopback lose packets too.)
func TestTransferSpreadsOnALossyLink(t *testing.T) {
	p := TransferProfile{Rate: 100e6, RTT: 4 * time.Millisecond, Loss: 0.03}
	res, err := RunTransfer(context.Background(), t.TempDir(), TransferSpec{
		File: transferFile(t, 4<<20), Profile: p, Chunker: defaultCDC(t), Streams: 4, FEC: transport.FECOff, Seed: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := res[0]
	t.Logf("push over %s: %d connections, %.1f Mbit/s", p, r.Connections, r.GoodputMbit)
	if !r.Complete || r.Connections <= 1 {
		t.Errorf("push over %s: complete %v, %d connections, want more than one", p, r.Complete, r.Connections)
	}
}

// TestTransferLongPathSpreadsOverFEC: left to decide, a bulk push through
// a long path that loses 1% of its datagrams at random runs its streams
// over a connection each, and over FEC: one NewReno connection through
// 200 ms carries next to nothing at that loss. Through 400 Mbit/s, 200 ms
// and 1% loss, 512 MiB moved at 200 Mbit/s so (16 streams), at 14 without
// FEC.
func TestTransferLongPathSpreadsOverFEC(t *testing.T) {
	p := TransferProfile{Rate: 400e6, RTT: 60 * time.Millisecond, Loss: 0.01}
	res, err := RunTransfer(context.Background(), t.TempDir(), TransferSpec{
		File: transferFile(t, 64<<20), Profile: p, Chunker: defaultCDC(t), Streams: 4, Seed: 7,
		Timeout: 2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := res[0]
	t.Logf("push over %s: %d connections, %d over FEC, %.1f Mbit/s", p, r.Connections, r.FECConnections, r.GoodputMbit)
	if !r.Complete || r.FECConnections != 4 {
		t.Errorf("push over %s: complete %v (%s), %d connections over FEC, want 4", p, r.Complete, r.Error, r.FECConnections)
	}
}

// TestTransferFECOnALossyLink: left to decide, a push and a pull through a
// link with a long round trip that loses 2% of its datagrams at random
// move their chunks to the server's FEC port, and both are verified.
func TestTransferFECOnALossyLink(t *testing.T) {
	p := TransferProfile{Rate: 100e6, RTT: 20 * time.Millisecond, Loss: 0.02}
	res, err := RunTransfer(context.Background(), t.TempDir(), TransferSpec{
		File: transferFile(t, 16<<20), Profile: p, Chunker: defaultCDC(t), Streams: 4, Pull: true, Seed: 6,
		Timeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 {
		t.Fatalf("%d results, want a push and a pull: %+v", len(res), res)
	}
	for _, r := range res {
		t.Logf("%s over %s: %d connections, %d over FEC, %.1f Mbit/s", r.Direction, p, r.Connections, r.FECConnections, r.GoodputMbit)
		if !r.Complete || r.FECConnections < 1 {
			t.Errorf("%s over %s: complete %v (%s), %d connections over FEC, want at least one", r.Direction, p, r.Complete, r.Error, r.FECConnections)
		}
	}
}
