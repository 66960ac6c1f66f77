package transport

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/chunksync/chunksync/engine"
)

// TestPushAndPullOverSeveralConnections: with Conns set, the data streams
// of a push and of a pull each use their own connection, and the file
// arrives whole both ways.
func TestPushAndPullOverSeveralConnections(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	local := writeFile(t, 6<<20, 31)
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Streams, cfg.Conns = 3, 3 })
	if err != nil {
		t.Fatal(err)
	}
	res := push(t, c, local, "f.bin")
	sameContent(t, ts, local, "f.bin")
	if got := c.Stats().Connections; got != 3 {
		t.Errorf("push on 3 streams over 3 connections made %d connections", got)
	}

	p, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Streams, cfg.Conns = 4, 4 })
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "f.bin")
	if _, err := engine.Pull(t.Context(), p, res.Manifest, dst, engine.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(local)
	if got, err := os.ReadFile(dst); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("pulled file differs: %v", err)
	}
	if got := p.Stats().Connections; got != 4 {
		t.Errorf("pull on 4 streams over 4 connections made %d connections", got)
	}
}

// TestAutomaticPullSpreads: left to decide, a pull spreads its streams
// over a connection each from the start. (Whether a push spreads depends
// on the losses it sees, which on a loaded machine loopback has too: see
// TestLossy, and bench's TestTransferSpreadsOnALossyLink.)
func TestAutomaticPullSpreads(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	local := writeFile(t, 4<<20, 32)
	res := push(t, ts.client(t), local, "f.bin")
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Streams = 4 })
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "f.bin")
	if _, err := engine.Pull(t.Context(), c, res.Manifest, dst, engine.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := c.Stats().Connections; got != 4 {
		t.Errorf("automatic pull on 4 streams made %d connections, want 4", got)
	}
}

// TestLossy: an upload spreads only on enough packets with enough lost.
func TestLossy(t *testing.T) {
	for _, c := range []struct {
		sent, received, lost uint64
		want                 bool
	}{
		{0, 0, 0, false},
		{100, 50, 50, false}, // too few packets to tell
		{10000, 5000, 0, false},
		{10000, 5000, 50, false}, // 0.5%: not more than lossyLink
		{10000, 5000, 51, true},
		{400, 200, 40, true},
	} {
		st := quic.ConnectionStats{PacketsSent: c.sent, PacketsReceived: c.received, PacketsLost: c.lost}
		if got := lossy(st); got != c.want {
			t.Errorf("%d sent, %d received, %d lost: lossy %v, want %v", c.sent, c.received, c.lost, got, c.want)
		}
	}
}

func TestConnsOutOfRange(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	for _, conns := range []int{-1, 9} {
		if _, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Streams, cfg.Conns = 8, conns }); err == nil {
			t.Errorf("Dial with %d connections for 8 streams worked", conns)
		}
	}
}

// TestBulkUploadDialsAhead: an upload of 64 MiB or more of a file the
// server holds no version of dials its data connections while the session
// opens, before it has a chunk to send; a small one does not.
func TestBulkUploadDialsAhead(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	for _, c := range []struct {
		size int64
		want int
	}{{bulkUpload, 4}, {bulkUpload - 1, 1}} {
		cl, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Streams, cfg.Conns = 4, 4 })
		if err != nil {
			t.Fatal(err)
		}
		spec := engine.UploadSpec{Path: "f.bin", Size: c.size, Mode: 0o644, ModTime: time.Now(), Chunker: rabin(t)}
		u, err := cl.OpenUpload(t.Context(), spec)
		if err != nil {
			t.Fatal(err)
		}
		// The dials run beside the open; they are done within the
		// handshake timeout.
		deadline := time.Now().Add(5 * time.Second)
		for cl.Stats().Connections < c.want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond)
		if got := cl.Stats().Connections; got != c.want {
			t.Errorf("upload of %d bytes: %d connections before its first chunk, want %d", c.size, got, c.want)
		}
		u.Close()
	}
}

// A connection after the first carries its streams without waiting for
// its hello's reply; when the server refuses that hello (here, a token's
// connection limit), the push ends with the server's reason rather than
// dialling on, and the client does not take the refusal for one of its
// protocol version.
func TestDataConnectionRefusedAtItsHello(t *testing.T) {
	ts := startServer(t, ServerConfig{MaxConnsPerToken: 1})
	local := writeFile(t, 4<<20, 32)
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Streams, cfg.Conns, cfg.RetryFor = 2, 2, time.Second })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err = engine.Push(ctx, c, local, "f.bin", engine.PushOptions{Chunker: smallChunks})
	if err == nil || !strings.Contains(err.Error(), "1 connections open, the server's limit") {
		t.Fatalf("push over two connections with a limit of one: %v", err)
	}
	t.Logf("refused after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if v := c.version.Load(); v != ProtocolVersion {
		t.Errorf("after a refusal at the connection limit the client speaks version %d, want %d", v, ProtocolVersion)
	}
}

// streamLog is a slog.Handler that counts the server's data streams.
type streamLog struct{ streams atomic.Int32 }

func (l *streamLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *streamLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *streamLog) WithGroup(string) slog.Handler            { return l }

func (l *streamLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "data stream" {
		l.streams.Add(1)
	}
	return nil
}

// A data stream opens only with a chunk to send: one opened once the
// queue is drained could find its session ended by the commit, which
// goes as the last chunks do. A push of one chunk over four streams opens
// one.
func TestDataStreamsOpenWithAChunk(t *testing.T) {
	log := new(streamLog)
	ts := startServer(t, ServerConfig{Logger: slog.New(log)})
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Streams = 4 })
	if err != nil {
		t.Fatal(err)
	}
	res := push(t, c, writeFile(t, 100<<10, 33), "one.bin")
	if len(res.Manifest.Chunks) != 1 {
		t.Fatalf("%d chunks, want 1", len(res.Manifest.Chunks))
	}
	if n := log.streams.Load(); n != 1 {
		t.Errorf("a push of one chunk over 4 streams opened %d data streams, want 1", n)
	}
}

// TestDataConnectionsFindTheMTU: the plain connections after the first
// probe for the path's MTU and send larger packets than quic-go's 1280
// bytes (loopback takes quic-go's largest, 1452); the first, which
// carries the requests, keeps to 1280, and so do those over FEC, where
// quic-go does not see the socket and never probes.
func TestDataConnectionsFindTheMTU(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	local := writeFile(t, 16<<20, 33)
	meanPacket := func(c *Client, slot int) float64 {
		conn, _ := c.live(slot)
		if conn == nil {
			t.Fatalf("slot %d: no connection", slot)
		}
		st := conn.ConnectionStats()
		return float64(st.BytesSent) / float64(st.PacketsSent)
	}
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Streams, cfg.Conns = 2, 2 })
	if err != nil {
		t.Fatal(err)
	}
	push(t, c, local, "plain.bin")
	if got := meanPacket(c, 0); got > 1280 {
		t.Errorf("first connection: packets of %.0f bytes on average, want at most 1280", got)
	}
	if got := meanPacket(c, 1); got <= 1300 {
		t.Errorf("second connection: packets of %.0f bytes on average, want more than 1300", got)
	}
	f, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Streams, cfg.Conns, cfg.FEC = 2, 2, FECOn })
	if err != nil {
		t.Fatal(err)
	}
	// Other content: the server holds every chunk of the first file.
	other := writeFile(t, 16<<20, 34)
	push(t, f, other, "fec.bin")
	if got := meanPacket(f, f.plain+1); got > 1280 {
		t.Errorf("second connection over FEC: packets of %.0f bytes on average, want at most 1280", got)
	}
	sameContent(t, ts, other, "fec.bin")
}
