//go:build !race

// The race detector slows both ends ten times over, and QUIC then sends
// probes and acknowledgements that a re-sync does not send at full speed:
// the wire counts of these tests mean something only without it. .ci/test
// runs them in a run of its own.

package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// quicResync is what chunksync moved, on the wire, re-syncing one release
// pair over loopback QUIC.
type quicResync struct {
	push, pull, repush      uint64 // UDP payload bytes, both directions, handshake included
	pushWall, pullWall      time.Duration
	pushChunks, pullChunks  int
	pushReused, pullFetched int64
	size                    int64
}

// wire is the bytes of both directions so far.
func wire(c *transport.Client) uint64 {
	st := c.Stats()
	return st.BytesSent + st.BytesReceived
}

// measureQUICResync does what a user of both ends does, each step a new
// connection: a pushes old, b pulls it, a pushes new (measured), b pulls
// new onto its old copy (measured), a pushes new again (measured).
func measureQUICResync(tb testing.TB, old, new []byte) quicResync {
	tb.Helper()
	ctx := context.Background()
	s := startTestServer(tb)
	dir := tb.TempDir()
	cacheA, cacheB := filepath.Join(dir, "cache-a"), filepath.Join(dir, "cache-b")
	oldPath, newPath := filepath.Join(dir, "old.tar"), filepath.Join(dir, "new.tar")
	pulled := filepath.Join(dir, "b", "x.tar")
	for p, b := range map[string][]byte{oldPath: old, newPath: new} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(pulled), 0o755); err != nil {
		tb.Fatal(err)
	}
	c, err := engine.LookupChunker(engine.DefaultCDC)
	if err != nil {
		tb.Fatal(err)
	}
	push := func(local string) (engine.PushResult, uint64, time.Duration) {
		start := time.Now()
		client := s.client(tb, cacheA)
		defer client.Close()
		res, err := engine.Push(ctx, client, local, "x.tar", engine.PushOptions{Chunker: c.Defaults})
		if err != nil {
			tb.Fatal(err)
		}
		return res, wire(client), time.Since(start)
	}
	pull := func() (engine.PullResult, uint64, time.Duration) {
		start := time.Now()
		client := s.client(tb, cacheB)
		defer client.Close()
		_, m, err := client.Manifest(ctx, "x.tar", 0)
		if err != nil {
			tb.Fatal(err)
		}
		res, err := engine.Pull(ctx, client, m, pulled, engine.PullOptions{})
		if err != nil {
			tb.Fatal(err)
		}
		return res, wire(client), time.Since(start)
	}
	push(oldPath)
	pull()
	var r quicResync
	r.size = int64(len(new))
	pushed, n, d := push(newPath)
	r.push, r.pushWall, r.pushChunks = n, d, pushed.ChunksSent
	pulledRes, n, d := pull()
	r.pull, r.pullWall, r.pullChunks, r.pullFetched = n, d, pulledRes.ChunksFetched, pulledRes.BytesFetched
	got, err := os.ReadFile(pulled)
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Equal(got, new) {
		tb.Fatal("the pulled file differs from the new version")
	}
	served, err := os.ReadFile(filepath.Join(s.files, "x.tar"))
	if err != nil {
		tb.Fatal(err)
	}
	if !bytes.Equal(served, new) {
		tb.Fatal("the server's file differs from the new version")
	}
	_, r.repush, _ = push(newPath)
	return r
}

// TestResyncOverQUICBeatsRsync is issue 3's target, measured on the wire:
// push v1, push v2, pull v2 onto a copy of v1 elsewhere, for consecutive
// x/tools releases, against rsync -z over a loopback daemon connection in
// the same run. Bytes are UDP payload both ways (QUIC, TLS and the
// handshake included) against rsync's TCP stream both ways.
func TestResyncOverQUICBeatsRsync(t *testing.T) {
	pairs := resyncPairs(t, newRsyncServer(t))
	var out strings.Builder
	w := tabwriter.NewWriter(&out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "pair\tsize\tpush B\trsync push B\tratio\tpush s\trsync s\tpull B\trsync pull B\tratio\tpull s\trsync s\tre-push B\t% of size\t")
	for _, p := range pairs {
		r := measureQUICResync(t, p.old, p.new)
		pushRatio := float64(r.push) / float64(p.push.Total())
		pullRatio := float64(r.pull) / float64(p.pull.Total())
		repush := 100 * float64(r.repush) / float64(r.size)
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%.2f\t%.3f\t%.3f\t%d\t%d\t%.2f\t%.3f\t%.3f\t%d\t%.3f\t\n", p.name, r.size,
			r.push, p.push.Total(), pushRatio, r.pushWall.Seconds(), p.push.Wall.Seconds(),
			r.pull, p.pull.Total(), pullRatio, r.pullWall.Seconds(), p.pull.Wall.Seconds(), r.repush, repush)
		if pushRatio > 1 || pullRatio > 1 {
			t.Errorf("%s: chunksync moved %d (push) and %d (pull) bytes, rsync -z %d and %d", p.name, r.push, r.pull, p.push.Total(), p.pull.Total())
		}
		if repush > 0.1 {
			t.Errorf("%s: re-push of the unchanged file moved %d bytes, %.3f%% of its size", p.name, r.repush, repush)
		}
	}
	w.Flush()
	t.Log("\n" + out.String())
}
