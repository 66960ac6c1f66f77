package transport

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
)

// storedProgress signals once the remote has acknowledged threshold bytes.
type storedProgress struct {
	stored    atomic.Int64
	threshold int64
	reached   chan struct{}
	once      sync.Once
}

func (p *storedProgress) Add(stage engine.Stage, n int64) {
	if stage == engine.StageStored && p.stored.Add(n) >= p.threshold {
		p.once.Do(func() { close(p.reached) })
	}
}

func TestServerRestartMidPush(t *testing.T) {
	dataDir := t.TempDir()
	a := startServer(t, ServerConfig{DataDir: dataDir})
	addr := a.Addr().String()
	c, err := a.dial(t, func(cfg *ClientConfig) { cfg.BWLimit = 8 << 20; cfg.RetryFor = 30 * time.Second })
	if err != nil {
		t.Fatal(err)
	}
	const size = 24 << 20
	local := writeFile(t, size, 7)
	progress := &storedProgress{threshold: size / 3, reached: make(chan struct{})}
	done := make(chan error, 1)
	var res engine.PushResult
	go func() {
		var err error
		res, err = engine.Push(context.Background(), c, local, "r.bin", engine.PushOptions{Chunker: rabin(t), Progress: progress})
		done <- err
	}()
	select {
	case <-progress.reached:
	case err := <-done:
		t.Fatalf("push ended before the restart: %v", err)
	}
	a.stop()
	// The same data directory and address, as after a crash and restart.
	tokenless := ServerConfig{DataDir: dataDir, Listen: addr}
	b := startServer(t, tokenless)
	if err := <-done; err != nil {
		t.Fatalf("push across a server restart: %v", err)
	}
	sameContent(t, b, local, "r.bin")
	if st := c.Stats(); st.Connections < 2 {
		t.Fatalf("push used %d connections across a restart", st.Connections)
	}
	if res.RawBytesSent > size+size/4 {
		t.Fatalf("push across a restart sent %d raw bytes for a %d-byte file", res.RawBytesSent, size)
	}
}

// TestBandwidthLimit checks that --bwlimit holds a push below its rate: the
// push cannot finish sooner than its bytes allow (a lower bound only, so a
// slow machine cannot make it fail).
func TestBandwidthLimit(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	const rate = 4 << 20
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.BWLimit = rate })
	if err != nil {
		t.Fatal(err)
	}
	const size = 8 << 20
	local := writeFile(t, size, 15)
	start := time.Now()
	res := push(t, c, local, "slow.bin")
	took := time.Since(start)
	// The limiter starts with one burst of credit (at most 256 KiB).
	minimum := time.Duration(float64(res.BytesSent-256<<10) / rate * float64(time.Second))
	if took < minimum {
		t.Fatalf("%d bytes at %d B/s took %v, less than the %v the limit allows", res.BytesSent, rate, took, minimum)
	}
}

func TestIdleSessionsExpire(t *testing.T) {
	ts := startServer(t, ServerConfig{SessionIdle: 300 * time.Millisecond})
	c := ts.client(t)
	up, err := c.OpenUpload(context.Background(), engine.UploadSpec{Path: "idle.bin", Size: 10, Chunker: rabin(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	list, err := c.Sessions(context.Background())
	if err != nil || len(list) != 1 || list[0].ID != up.ID() {
		t.Fatalf("open session not listed: %v %v", list, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		list, err := c.Sessions(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an idle session did not expire")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := up.Missing(context.Background(), 0, []engine.ChunkRef{{ID: engine.SumChunk(nil), Size: 1}}); err == nil {
		t.Fatal("an expired session still answers")
	}
}

// TestServerRestartEightPushes: the server restarts while eight clients
// push; every push completes on the new server, verified, and together
// they send little more than their files: what was stored before the
// restart is not sent again.
func TestServerRestartEightPushes(t *testing.T) {
	const clients, size = 8, 6 << 20
	dataDir := t.TempDir()
	a := startServer(t, ServerConfig{DataDir: dataDir})
	addr := a.Addr().String()
	locals := make([]string, clients)
	results := make([]engine.PushResult, clients)
	errs := make(chan error, clients)
	var halfway sync.WaitGroup
	for i := range clients {
		c, err := a.dial(t, func(cfg *ClientConfig) { cfg.BWLimit = 2 << 20; cfg.RetryFor = time.Minute })
		if err != nil {
			t.Fatal(err)
		}
		locals[i] = writeFile(t, size, uint64(40+i))
		progress := &storedProgress{threshold: size / 3, reached: make(chan struct{})}
		halfway.Go(func() { <-progress.reached })
		go func() {
			var err error
			results[i], err = engine.Push(context.Background(), c, locals[i], fmt.Sprintf("p%d.bin", i), engine.PushOptions{Chunker: rabin(t), Progress: progress})
			if err != nil {
				// The restart must not stop a push before it is a third
				// through: release the wait for it.
				progress.once.Do(func() { close(progress.reached) })
			}
			errs <- err
		}()
	}
	halfway.Wait()
	a.stop()
	b := startServer(t, ServerConfig{DataDir: dataDir, Listen: addr})
	for range clients {
		if err := <-errs; err != nil {
			t.Errorf("push across a server restart: %v", err)
		}
	}
	if t.Failed() {
		return
	}
	var sent int64
	for i, res := range results {
		sameContent(t, b, locals[i], fmt.Sprintf("p%d.bin", i))
		sent += res.RawBytesSent
	}
	t.Logf("8 pushes of %d MiB across a restart sent %d MiB of chunks", size>>20, sent>>20)
	if sent > clients*(size+size/4) {
		t.Fatalf("8 pushes of %d bytes across a restart sent %d raw bytes", size, sent)
	}
}

// halt is a ServerConfig.Checkpoint that stops the goroutines passing one
// point as a crash there would: each waits there until the test has
// crashed the server (testServer.crash) and then ends, running not a step
// further.
type halt struct {
	point   string
	reached chan struct{} // closed when a goroutine first passes point
	once    sync.Once
	crashed chan struct{} // closed by crash
}

func newHalt(point string) *halt {
	return &halt{point: point, reached: make(chan struct{}), crashed: make(chan struct{})}
}

func (h *halt) checkpoint(point string) {
	if point != h.point {
		return
	}
	h.once.Do(func() { close(h.reached) })
	<-h.crashed
	runtime.Goexit()
}

// crash stops the server as SIGKILL would: its sockets close first, so
// that no reply and no CONNECTION_CLOSE leaves, then the goroutines that
// h halted end, and the server stops and leaves its data directory and
// address to a successor.
func (ts *testServer) crash(h *halt) {
	ts.udp.Close()
	if ts.fec != nil {
		ts.fec.Close()
	}
	close(h.crashed)
	ts.stop()
}

// TestClientWaitingNoticesRestart: a client that waits for the reply to
// its commit sends heartbeats. When its server crashes there and a new one
// starts on the same address, the new server answers a heartbeat with a
// stateless reset, and the client commits again on a new connection,
// well before its idle timeout (20 s), which is when keep-alives alone,
// too small to be answered with a reset, would let it notice. The commit
// it repeats had recorded its version: the repeat is answered with that
// version rather than making another.
func TestClientWaitingNoticesRestart(t *testing.T) {
	dataDir := t.TempDir()
	h := newHalt(CheckpointCommitRecorded)
	a := startServer(t, ServerConfig{DataDir: dataDir, FECListen: NoFEC, Checkpoint: h.checkpoint})
	c, err := a.dial(t, func(cfg *ClientConfig) { cfg.RetryFor = time.Minute })
	if err != nil {
		t.Fatal(err)
	}
	local := writeFile(t, 1<<20, 61)
	done := make(chan error, 1)
	var res engine.PushResult
	go func() {
		var err error
		res, err = engine.Push(context.Background(), c, local, "w.bin", engine.PushOptions{Chunker: rabin(t)})
		done <- err
	}()
	select {
	case <-h.reached:
	case err := <-done:
		t.Fatalf("push ended (%v) before its commit reached %s", err, h.point)
	}
	a.crash(h)
	b := startServer(t, ServerConfig{DataDir: dataDir, Listen: a.Addr().String(), FECListen: NoFEC})
	restarted := time.Now()
	if err := <-done; err != nil {
		t.Fatalf("push across the server's crash: %v", err)
	}
	took := time.Since(restarted)
	t.Logf("the push waiting for its commit's reply ended %.1f s after the restart", took.Seconds())
	if took > idleTimeout/2 {
		t.Errorf("the push ended %.1f s after the restart: it waited for its idle timeout (%v)", took.Seconds(), idleTimeout)
	}
	if res.Version != 1 {
		t.Errorf("the repeated commit made version %d, want 1", res.Version)
	}
	sameContent(t, b, local, "w.bin")
}

// TestHeartbeatsNegotiated: a server takes datagrams, for heartbeats, and
// a client still works with a server from before heartbeats, which takes
// none: it sends it none.
func TestHeartbeatsNegotiated(t *testing.T) {
	for _, tc := range []struct {
		name string
		srv  ServerConfig
		want bool
	}{
		{"server with heartbeats", ServerConfig{}, true},
		{"server before heartbeats", ServerConfig{noDatagrams: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startServer(t, tc.srv).client(t)
			conn, _ := c.live(0)
			if got := conn.ConnectionState().SupportsDatagrams.Remote; got != tc.want {
				t.Errorf("server takes datagrams: %v, want %v", got, tc.want)
			}
			push(t, c, writeFile(t, 1<<20, 62), "h.bin")
		})
	}
}
