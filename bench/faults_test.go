package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// Transfers through a link that loses, reorders and duplicates packets, or
// goes down in the middle: each must complete and verify, or fail saying
// that the server was out of reach, and for how long.

// linkClient dials the server s through link l. FEC is off: its port is
// reached directly, not through the link.
func linkClient(t *testing.T, s *testServer, l *Link, mod func(*transport.ClientConfig)) *transport.Client {
	t.Helper()
	cfg := transport.ClientConfig{Addr: l.Addr().String(), Token: s.token, Fingerprint: s.srv.Fingerprint(), FEC: transport.FECOff}
	if mod != nil {
		mod(&cfg)
	}
	c, err := transport.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// randomFile writes size seeded bytes to a new file.
func randomFile(t *testing.T, size int64, seed uint64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "src.bin")
	if err := WriteRandomFile(p, size, seed); err != nil {
		t.Fatal(err)
	}
	return p
}

func rabinParams(t *testing.T) engine.ChunkerParams {
	t.Helper()
	k, err := engine.LookupChunker("rabin")
	if err != nil {
		t.Fatal(err)
	}
	return k.Defaults
}

// atStage calls fn once, when a push or pull has reported bytes of stage
// amounting to threshold.
type atStage struct {
	stage     engine.Stage
	threshold int64
	fn        func()
	n         atomic.Int64
	once      sync.Once
}

func (a *atStage) Add(stage engine.Stage, n int64) {
	if stage == a.stage && a.n.Add(n) >= a.threshold {
		a.once.Do(a.fn)
	}
}

// TestLossyLinkTransfers: at 10% loss each way, with reordering and
// duplication, a push and a pull complete and verify.
func TestLossyLinkTransfers(t *testing.T) {
	s := startTestServer(t)
	p := LinkProfile{Loss: 0.10, Delay: 2 * time.Millisecond, Reorder: 0.05, Duplicate: 0.05}
	l := runLink(t, s.srv.Addr().String(), LinkConfig{Up: p, Down: p, Seed: 61})
	c := linkClient(t, s, l, nil)
	local := randomFile(t, 2<<20, 62)
	res, err := engine.Push(t.Context(), c, local, "lossy.bin", engine.PushOptions{Chunker: rabinParams(t)})
	if err != nil {
		t.Fatalf("push at 10%% loss: %v", err)
	}
	if err := filesEqual(filepath.Join(s.files, "lossy.bin"), local); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "pulled.bin")
	if _, err := engine.Pull(t.Context(), c, res.Manifest, dst, engine.PullOptions{}); err != nil {
		t.Fatalf("pull at 10%% loss: %v", err)
	}
	if err := filesEqual(dst, local); err != nil {
		t.Fatal(err)
	}
	up, down := l.Stats()
	t.Logf("up %+v\ndown %+v", up, down)
	if up.DroppedLoss == 0 || down.DroppedLoss == 0 || up.Reordered == 0 || down.Duplicated == 0 {
		t.Errorf("the link did not impair the transfers: up %+v, down %+v", up, down)
	}
}

// TestLinkOutage: the link goes down for 30 s in the middle of a push,
// longer than the client's connection survives silence: the client
// re-dials with backoff until the link is back, and the push completes
// without sending again what was stored. A pull through a 3 s outage,
// which its connection rides out, completes too.
func TestLinkOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("a 30 s outage")
	}
	s := startTestServer(t)
	l := runLink(t, s.srv.Addr().String(), LinkConfig{})
	c := linkClient(t, s, l, func(cfg *transport.ClientConfig) { cfg.BWLimit = 2 << 20; cfg.DialTimeout = 2 * time.Second })
	const size = 6 << 20
	local := randomFile(t, size, 63)
	outage := func(d time.Duration) func() {
		return func() {
			l.SetDown(true)
			time.AfterFunc(d, func() { l.SetDown(false) })
		}
	}
	start := time.Now()
	res, err := engine.Push(t.Context(), c, local, "outage.bin", engine.PushOptions{
		Chunker:  rabinParams(t),
		Progress: &atStage{stage: engine.StageStored, threshold: size / 3, fn: outage(30 * time.Second)},
	})
	if err != nil {
		t.Fatalf("push across a 30 s outage: %v", err)
	}
	took := time.Since(start)
	if err := filesEqual(filepath.Join(s.files, "outage.bin"), local); err != nil {
		t.Fatal(err)
	}
	up, _ := l.Stats()
	st := c.Stats()
	t.Logf("push across a 30 s outage took %v, %d connections, %d raw bytes sent; link dropped %d datagrams while down", took, st.Connections, res.RawBytesSent, up.DroppedDown)
	if up.DroppedDown == 0 || took < 30*time.Second {
		t.Fatalf("the outage did not happen during the push: %d dropped, took %v", up.DroppedDown, took)
	}
	if st.Connections < 2 {
		t.Errorf("push across an outage longer than the idle timeout used %d connection", st.Connections)
	}
	if res.RawBytesSent > size+size/4 {
		t.Errorf("push across an outage sent %d raw bytes for a %d-byte file", res.RawBytesSent, size)
	}

	dst := filepath.Join(t.TempDir(), "pulled.bin")
	p := linkClient(t, s, l, func(cfg *transport.ClientConfig) { cfg.DialTimeout = 2 * time.Second })
	p.SetBWLimit(0)
	if _, err := engine.Pull(t.Context(), p, res.Manifest, dst, engine.PullOptions{
		Progress: &atStage{stage: engine.StageFetched, threshold: 1, fn: outage(3 * time.Second)},
	}); err != nil {
		t.Fatalf("pull across a 3 s outage: %v", err)
	}
	if err := filesEqual(dst, local); err != nil {
		t.Fatal(err)
	}
}

// TestLinkOutageGivesUp: with a retry budget shorter than the outage, a
// push fails, saying that the server was unreachable and for how long:
// the idle timeout that noticed the silence and the budget spent
// re-dialling.
func TestLinkOutageGivesUp(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the client's idle timeout")
	}
	s := startTestServer(t)
	l := runLink(t, s.srv.Addr().String(), LinkConfig{})
	c := linkClient(t, s, l, func(cfg *transport.ClientConfig) {
		cfg.BWLimit = 2 << 20
		cfg.DialTimeout = time.Second
		cfg.RetryFor = time.Second
	})
	const size = 6 << 20
	local := randomFile(t, size, 64)
	var down time.Time
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	_, err := engine.Push(ctx, c, local, "gone.bin", engine.PushOptions{
		Chunker: rabinParams(t),
		Progress: &atStage{stage: engine.StageStored, threshold: size / 3, fn: func() {
			down = time.Now()
			l.SetDown(true)
		}},
	})
	silent := time.Since(down)
	t.Logf("after %v down: %v", silent.Round(time.Second), err)
	if !errors.Is(err, transport.ErrUnreachable) || !strings.Contains(err.Error(), "nothing heard from the server for 2") {
		t.Fatalf("push through a link that stays down: %v; want the server unreachable for over 20 s", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("the push gave up only when the test's own deadline ended it")
	}
}

// filesEqual returns an error unless the files at got and want hold the
// same bytes.
func filesEqual(got, want string) error {
	g, err := os.ReadFile(got)
	if err != nil {
		return err
	}
	w, err := os.ReadFile(want)
	if err != nil {
		return err
	}
	if !bytes.Equal(g, w) {
		return fmt.Errorf("%s differs from %s (%d vs %d bytes)", got, want, len(g), len(w))
	}
	return nil
}
