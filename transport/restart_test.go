package transport

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
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
	// And a pull, onto nothing: every chunk comes through the limiter.
	dst := filepath.Join(t.TempDir(), "slow.bin")
	start = time.Now()
	pulled, err := engine.Pull(t.Context(), c, res.Manifest, dst, engine.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	took = time.Since(start)
	minimum = time.Duration(float64(pulled.BytesFetched-256<<10) / rate * float64(time.Second))
	if pulled.BytesFetched < size/2 || took < minimum {
		t.Fatalf("a pull fetching %d bytes at %d B/s took %v, less than the %v the limit allows", pulled.BytesFetched, rate, took, minimum)
	}
}

func TestIdleSessionsExpire(t *testing.T) {
	ts := startServer(t, ServerConfig{SessionIdle: 300 * time.Millisecond})
	c := ts.client(t)
	up, err := openSession(context.Background(), c, engine.UploadSpec{Path: "idle.bin", Size: 10, Chunker: rabin(t)})
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
	ts.crashed.Store(true)
	ts.udp.Close()
	if ts.fec != nil {
		ts.fec.Close()
	}
	close(h.crashed)
	ts.stop()
}

// pushed is the end of a push: its result, or why it failed.
type pushed struct {
	engine.PushResult
	err error
}

// pushHalted starts a push of local as remote and returns once its commit
// has reached the point h halts at; the push's end comes on the channel.
func pushHalted(t *testing.T, ctx context.Context, c *Client, local, remote string, h *halt) <-chan pushed {
	t.Helper()
	done := make(chan pushed, 1)
	go func() {
		res, err := engine.Push(ctx, c, local, remote, engine.PushOptions{Chunker: rabin(t)})
		done <- pushed{res, err}
	}()
	select {
	case <-h.reached:
	case p := <-done:
		t.Fatalf("push ended (%v) before its commit reached %s", p.err, h.point)
	}
	return done
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
	done := pushHalted(t, context.Background(), c, local, "w.bin", h)
	a.crash(h)
	b := startServer(t, ServerConfig{DataDir: dataDir, Listen: a.Addr().String(), FECListen: NoFEC})
	restarted := time.Now()
	res := <-done
	if res.err != nil {
		t.Fatalf("push across the server's crash: %v", res.err)
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

// TestCommitCrashFilesRootFollowsIndex crashes the server at each point of
// a commit, under a client that never repeats the commit, and starts it
// again: from the restart on, the files root holds the latest version the
// index records, the new one once it was recorded, and never a version
// ahead of the index; the data directory then verifies clean.
func TestCommitCrashFilesRootFollowsIndex(t *testing.T) {
	for _, tc := range []struct {
		point    string
		recorded bool
		// left is what verify finds before the restart. (The halted
		// commit removes its temporary file as it ends, which a
		// SIGKILL would leave for the restart to remove.)
		left []index.ProblemKind
	}{
		{CheckpointCommitAssembled, false, nil},
		{CheckpointCommitRecorded, true, []index.ProblemKind{index.ProblemVersionPending, ProblemFileMismatch}},
		{CheckpointCommitRenamed, true, []index.ProblemKind{index.ProblemVersionPending}},
	} {
		t.Run(tc.point, func(t *testing.T) {
			dir := t.TempDir()
			v1, v2 := writeFile(t, 256<<10, 63), writeFile(t, 256<<10, 64)
			a := startServer(t, ServerConfig{DataDir: dir, FECListen: NoFEC})
			push(t, a.client(t), v1, "c.bin")
			a.stop()

			h := newHalt(tc.point)
			b := startServer(t, ServerConfig{DataDir: dir, FECListen: NoFEC, Checkpoint: h.checkpoint})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := pushHalted(t, ctx, b.client(t), v2, "c.bin", h)
			b.crash(h)
			cancel()
			<-done
			if got := verifyData(t, dir); !slices.Equal(got, tc.left) {
				t.Errorf("the crash left %v, want %v", got, tc.left)
			}

			r := startServer(t, ServerConfig{DataDir: dir, FECListen: NoFEC})
			// A request is answered once the server has finished the
			// commits that the crash interrupted.
			if _, err := r.client(t).Sessions(t.Context()); err != nil {
				t.Fatal(err)
			}
			want, wantN := v1, uint64(1)
			if tc.recorded {
				want, wantN = v2, 2
			}
			if v, _, err := r.db.Manifest(t.Context(), "c.bin", 0); err != nil || v.Number != wantN {
				t.Fatalf("latest version %d (%v), want %d", v.Number, err, wantN)
			}
			sameContent(t, r, want, "c.bin")
			r.stop()
			if got := verifyData(t, dir); len(got) != 0 {
				t.Errorf("verify after the restart: %v", got)
			}
		})
	}
}

// TestRepeatedCommitWaitsForTheFirst: a commit repeated while the first
// still runs, as a client repeats one whose reply it lost with its
// connection, waits for the first and is answered with the first's
// version. (It used to find the session still open, wait for the first,
// and record the same file again as a second version.)
func TestRepeatedCommitWaitsForTheFirst(t *testing.T) {
	release := make(chan struct{})
	var first sync.Once
	ts := startServer(t, ServerConfig{Checkpoint: func(point string) {
		if point == CheckpointCommitAssembled {
			first.Do(func() { <-release })
		}
	}})
	remote := commitsTwice{ts.client(t)}
	done := make(chan error, 1)
	var res engine.PushResult
	go func() {
		var err error
		res, err = engine.Push(context.Background(), remote, writeFile(t, 256<<10, 65), "twice.bin", engine.PushOptions{Chunker: rabin(t)})
		done <- err
	}()
	// Both commits are in: one holds the path's lock, halted, the other
	// waits for it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		ts.commitMu.Lock()
		l := ts.commits["twice.bin"]
		both := l != nil && l.users == 2
		ts.commitMu.Unlock()
		if both {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the two commits did not both reach the path's lock")
		}
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v, _, err := ts.db.Manifest(t.Context(), "twice.bin", 0); err != nil || v.Number != 1 || res.Version != 1 {
		t.Errorf("latest version %d (%v), the commits answered %d; want 1", v.Number, err, res.Version)
	}
}

// commitsTwice is a Remote whose uploads send every commit twice at once.
type commitsTwice struct{ *Client }

func (r commitsTwice) OpenUpload(ctx context.Context, spec engine.UploadSpec) (engine.Upload, error) {
	u, err := r.Client.OpenUpload(ctx, spec)
	if err != nil {
		return nil, err
	}
	return uploadCommitsTwice{u}, nil
}

type uploadCommitsTwice struct{ engine.Upload }

// Commit sends m twice at once and fails unless both are answered with
// the same version.
func (u uploadCommitsTwice) Commit(ctx context.Context, m *engine.Manifest) (engine.CommitResult, error) {
	var g errgroup.Group
	var res [2]engine.CommitResult
	for i := range res {
		g.Go(func() error {
			var err error
			res[i], err = u.Upload.Commit(ctx, m)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return engine.CommitResult{}, err
	}
	if res[0] != res[1] {
		return engine.CommitResult{}, fmt.Errorf("one commit sent twice made versions %d and %d", res[0].Version, res[1].Version)
	}
	return res[0], nil
}
