package transport

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

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

// TestAutomaticConnectionsOnACleanLink: left to decide, a push over a link
// that loses nothing keeps to one connection, and a pull spreads over one
// per stream. The push is held to 16 MiB/s: on a loaded machine (the race
// detector) a server that falls behind overflows its socket's buffer, and
// loopback then loses packets too.
func TestAutomaticConnectionsOnACleanLink(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	local := writeFile(t, 4<<20, 32)
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Streams, cfg.BWLimit = 4, 16<<20 })
	if err != nil {
		t.Fatal(err)
	}
	res := push(t, c, local, "f.bin")
	if got := c.Stats().Connections; got != 1 {
		t.Errorf("automatic push over loopback made %d connections, want 1", got)
	}
	dst := filepath.Join(t.TempDir(), "f.bin")
	if _, err := engine.Pull(t.Context(), c, res.Manifest, dst, engine.PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := c.Stats().Connections; got != 4 {
		t.Errorf("automatic pull on 4 streams made %d connections in all, want 4", got)
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
