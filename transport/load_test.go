package transport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// The load test runs the server in a process of its own, the test binary
// started again with loadServerEnv naming the data directory, so that the
// goroutines, file descriptors, heap and RSS it counts are the server's
// alone and not those of the 32 clients beside it.
const (
	loadServerEnv = "CHUNKSYNC_LOAD_SERVER"
	// loadTimeEnv makes the load test run longer than its CI default, for
	// example CHUNKSYNC_LOAD_TIME=5m.
	loadTimeEnv = "CHUNKSYNC_LOAD_TIME"
	// loadBudget and loadChunkCache are the load server's MemoryBudget
	// and ChunkCache, smaller than the defaults so that a server that
	// holds more than they allow shows.
	loadBudget     = 64 << 20
	loadChunkCache = 16 << 20
)

// serverSample is what the load server reports of itself when asked.
type serverSample struct {
	Goroutines int    `json:"goroutines"`
	FDs        int    `json:"fds"`
	HeapInuse  uint64 `json:"heap_inuse"`
	RSS        uint64 `json:"rss"`
	RSSPeak    uint64 `json:"rss_peak"` // VmHWM: the kernel's high-water mark
}

// runLoadServer is the load server's process: it serves dataDir, prints
// its address and fingerprint, then answers each line on stdin with a
// serverSample, until stdin closes or it is signalled.
func runLoadServer(dataDir string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	srv, err := NewServer(ServerConfig{DataDir: dataDir, Listen: "127.0.0.1:0", MemoryBudget: loadBudget, ChunkCache: loadChunkCache})
	if err != nil {
		return err
	}
	defer srv.Close()
	debug.SetMemoryLimit(srv.MemoryLimit())
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var serveErr error
	wg.Go(func() { serveErr = srv.Serve(ctx) })
	out := json.NewEncoder(os.Stdout)
	out.Encode(map[string]string{"addr": srv.Addr().String(), "fingerprint": srv.Fingerprint()})
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		s, err := sampleSelf()
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		out.Encode(s)
	}
	cancel()
	wg.Wait()
	return serveErr
}

// sampleSelf counts this process's goroutines, open descriptors, heap in
// use and resident memory.
func sampleSelf() (serverSample, error) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return serverSample{}, fmt.Errorf("count descriptors: %w", err)
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return serverSample{}, fmt.Errorf("read memory status: %w", err)
	}
	s := serverSample{Goroutines: runtime.NumGoroutine(), FDs: len(fds), HeapInuse: ms.HeapInuse}
	for line := range strings.Lines(string(status)) {
		name, value, _ := strings.Cut(line, ":")
		kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		switch name {
		case "VmRSS":
			s.RSS = kb << 10
		case "VmHWM":
			s.RSSPeak = kb << 10
		}
	}
	return s, nil
}

// loadServer is the parent's handle on the load server's process.
type loadServer struct {
	addr, fingerprint string
	cmd               *exec.Cmd
	mu                sync.Mutex // one question at a time
	ask               io.WriteCloser
	answers           *bufio.Scanner
}

func startLoadServer(t *testing.T, dataDir string) *loadServer {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), loadServerEnv+"="+dataDir)
	cmd.Stderr = os.Stderr
	ask, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start load server: %v", err)
	}
	ls := &loadServer{cmd: cmd, ask: ask, answers: bufio.NewScanner(out)}
	t.Cleanup(func() { ls.stop(t) })
	var hello struct{ Addr, Fingerprint string }
	if !ls.answers.Scan() || json.Unmarshal(ls.answers.Bytes(), &hello) != nil {
		t.Fatalf("load server did not say where it listens: %q %v", ls.answers.Bytes(), ls.answers.Err())
	}
	ls.addr, ls.fingerprint = hello.Addr, hello.Fingerprint
	// The server says where it listens before Serve has started its
	// goroutines (Serve first finishes the commits a crash interrupted).
	// A hello it refuses is answered only once it accepts connections,
	// and so once the first sample counts all that it runs.
	c, err := Dial(context.Background(), ClientConfig{Addr: ls.addr, Token: "not a token", Fingerprint: ls.fingerprint})
	if err != nil {
		t.Fatalf("dial the load server: %v", err)
	}
	defer c.Close()
	if _, err = c.Sessions(context.Background()); !errors.Is(err, ErrAuth) {
		t.Fatalf("hello with a wrong token to the load server: %v, want it refused", err)
	}
	return ls
}

func (ls *loadServer) sample() (serverSample, error) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	var s serverSample
	if _, err := io.WriteString(ls.ask, "sample\n"); err != nil {
		return s, fmt.Errorf("ask the load server: %w", err)
	}
	if !ls.answers.Scan() {
		return s, fmt.Errorf("load server did not answer: %v", ls.answers.Err())
	}
	if err := json.Unmarshal(ls.answers.Bytes(), &s); err != nil {
		return s, fmt.Errorf("load server's answer %q: %w", ls.answers.Bytes(), err)
	}
	return s, nil
}

func (ls *loadServer) mustSample(t *testing.T) serverSample {
	t.Helper()
	s, err := ls.sample()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// stop closes the server's stdin, which ends it, and waits for it.
func (ls *loadServer) stop(t *testing.T) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.ask == nil {
		return
	}
	ls.ask.Close()
	ls.ask = nil
	if err := ls.cmd.Wait(); err != nil {
		t.Errorf("load server: %v", err)
	}
}

// settle samples the server until its goroutines and descriptors are back
// to before or a minute has passed, and returns the last sample: a closed
// connection's handlers end a little after the client has gone.
func (ls *loadServer) settle(t *testing.T, before serverSample) serverSample {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		s := ls.mustSample(t)
		if s.Goroutines <= before.Goroutines && s.FDs <= before.FDs || time.Now().After(deadline) {
			return s
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// loadSegments are the blocks the load test's files are made of: each file
// takes several, so that the files of different clients share chunks.
func loadSegments(n, size int) [][]byte {
	segs := make([][]byte, n)
	for i := range segs {
		segs[i] = make([]byte, size)
		rand.NewChaCha8([32]byte{'s', byte(i)}).Read(segs[i])
	}
	return segs
}

// loadFile writes the file of client i's round r: six segments picked by a
// seeded draw, then 64 KiB of its own, and returns its path.
func loadFile(dir string, segs [][]byte, i, r int) (string, error) {
	rng := rand.New(rand.NewPCG(uint64(i), uint64(r)))
	var b bytes.Buffer
	for range 6 {
		b.Write(segs[rng.IntN(len(segs))])
	}
	own := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{'o', byte(i), byte(r), byte(r >> 8)}).Read(own)
	b.Write(own)
	p := filepath.Join(dir, fmt.Sprintf("c%02d-r%d.bin", i, r))
	return p, os.WriteFile(p, b.Bytes(), 0o640)
}

// loadLedger records what the clients pushed, for the others to pull and
// for the checks at the end.
type loadLedger struct {
	mu     sync.Mutex
	pushed map[string]string // remote path → local file
	chunks map[engine.ChunkID]uint32
	latest []string // remote path of each client's last push

	pushes, pulls       int
	bytesPushed, pulled int64
	sent                int64 // raw bytes of the chunks pushes sent
}

func (l *loadLedger) recordPush(i int, remote, local string, res engine.PushResult) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pushed[remote] = local
	l.latest[i] = remote
	for _, ref := range res.Manifest.Chunks {
		l.chunks[ref.ID] = ref.Size
	}
	l.pushes++
	l.bytesPushed += res.Manifest.Size
	l.sent += res.RawBytesSent
}

// pick returns the latest push of another client than i, or of i if no
// other has pushed yet.
func (l *loadLedger) pick(i int, rng *rand.Rand) (remote, local string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for range len(l.latest) {
		j := rng.IntN(len(l.latest))
		if r := l.latest[j]; r != "" && j != i {
			return r, l.pushed[r]
		}
	}
	return l.latest[i], l.pushed[l.latest[i]]
}

// TestLoad runs 32 clients, each with a token of its own, that push files
// sharing chunks with the others' and pull what the others pushed,
// against one server process, for 20 s (loadTimeEnv for longer). Every
// pull and every materialised file is compared byte for byte; the store
// and the index must hold each distinct chunk of all pushed files once
// and nothing else; the server's goroutines and descriptors must return
// to what they were before the clients came, and its heap stay within a
// bound derived from its memory budget.
func TestLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	const clients = 32
	run := 20 * time.Second
	if v := os.Getenv(loadTimeEnv); v != "" {
		var err error
		if run, err = time.ParseDuration(v); err != nil {
			t.Fatalf("%s: %v", loadTimeEnv, err)
		}
	}
	dataDir := t.TempDir()
	tokens := make([]string, clients)
	for i := range tokens {
		var err error
		if tokens[i], err = NewToken(dataDir, fmt.Sprintf("load-%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	ls := startLoadServer(t, dataDir)
	before := ls.mustSample(t)

	var peak serverSample
	var sampleErr error
	sampling, stopSampling := context.WithCancel(context.Background())
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			s, err := ls.sample()
			if err != nil {
				sampleErr = err
				return
			}
			peak.HeapInuse = max(peak.HeapInuse, s.HeapInuse)
			peak.RSS = max(peak.RSS, s.RSS)
			peak.Goroutines = max(peak.Goroutines, s.Goroutines)
			peak.FDs = max(peak.FDs, s.FDs)
			select {
			case <-sampling.Done():
				return
			case <-tick.C:
			}
		}
	})

	segs := loadSegments(24, 512<<10)
	chunker := rabin(t)
	ledger := &loadLedger{pushed: make(map[string]string), chunks: make(map[engine.ChunkID]uint32), latest: make([]string, clients)}
	start := time.Now()
	deadline := start.Add(run)
	g, ctx := errgroup.WithContext(context.Background())
	for i := range clients {
		g.Go(func() error {
			c, err := Dial(ctx, ClientConfig{Addr: ls.addr, Token: tokens[i], Fingerprint: ls.fingerprint, Streams: 4})
			if err != nil {
				return fmt.Errorf("client %d: %w", i, err)
			}
			defer c.Close()
			dir := t.TempDir()
			dst := filepath.Join(dir, "pulled.bin")
			rng := rand.New(rand.NewPCG(uint64(i), 99))
			// Every client pushes and pulls at least once, however slow
			// the machine.
			for r := 0; r == 0 || time.Now().Before(deadline); r++ {
				local, err := loadFile(dir, segs, i, r)
				if err != nil {
					return err
				}
				remote := fmt.Sprintf("c%02d/r%d.bin", i, r)
				res, err := engine.Push(ctx, c, local, remote, engine.PushOptions{Chunker: chunker})
				if err != nil {
					return fmt.Errorf("client %d round %d: %w", i, r, err)
				}
				ledger.recordPush(i, remote, local, res)

				remote, want := ledger.pick(i, rng)
				_, m, err := c.Manifest(ctx, remote, 0)
				if err != nil {
					return fmt.Errorf("client %d round %d: %w", i, r, err)
				}
				// dst holds the last round's pull, which seeds this one.
				if _, err := engine.Pull(ctx, c, m, dst, engine.PullOptions{}); err != nil {
					return fmt.Errorf("client %d round %d: %w", i, r, err)
				}
				if err := filesEqual(dst, want); err != nil {
					return fmt.Errorf("client %d round %d: pull of %s: %w", i, r, remote, err)
				}
				ledger.mu.Lock()
				ledger.pulls++
				ledger.pulled += m.Size
				ledger.mu.Unlock()
			}
			return nil
		})
	}
	err := g.Wait()
	took := time.Since(start)
	stopSampling()
	sampler.Wait()
	if err := errors.Join(err, sampleErr); err != nil {
		t.Fatal(err)
	}
	after := ls.settle(t, before)

	for remote, local := range ledger.pushed {
		if err := filesEqual(filepath.Join(dataDir, "files", remote), local); err != nil {
			t.Errorf("materialised %s: %v", remote, err)
		}
	}
	t.Logf("%d clients, %v: %d pushes (%d MiB, %d MiB of chunks sent), %d pulls (%d MiB), %d distinct chunks",
		clients, took.Round(time.Second), ledger.pushes, ledger.bytesPushed>>20, ledger.sent>>20, ledger.pulls, ledger.pulled>>20, len(ledger.chunks))
	t.Logf("server: peak heap in use %d MiB, peak RSS %d MiB (sampled) / %d MiB (VmHWM); goroutines %d before, %d peak, %d after; fds %d before, %d peak, %d after",
		peak.HeapInuse>>20, peak.RSS>>20, after.RSSPeak>>20, before.Goroutines, peak.Goroutines, after.Goroutines, before.FDs, peak.FDs, after.FDs)
	if after.Goroutines > before.Goroutines {
		t.Errorf("server goroutines: %d before the clients, %d a minute after they closed", before.Goroutines, after.Goroutines)
	}
	if after.FDs > before.FDs {
		t.Errorf("server descriptors: %d before the clients, %d a minute after they closed", before.FDs, after.FDs)
	}
	// What the server may hold: its budget for chunk data in flight, its
	// cache of raw chunks and the headroom for what those do not count,
	// the soft memory limit it runs under (Server.MemoryLimit), and a
	// quarter more for the collector to catch up with a burst. (32
	// clients peaked at 194 MiB of heap against this limit's 208; at 353
	// MiB with no limit set.)
	limit := int64(loadBudget + loadChunkCache + memoryHeadroom)
	if bound := uint64(limit + limit/4); peak.HeapInuse > bound {
		t.Errorf("server heap peaked at %d MiB, over the %d MiB its memory limit allows", peak.HeapInuse>>20, bound>>20)
	}
	ls.stop(t)
	checkDedup(t, dataDir, ledger.chunks)
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

// checkDedup opens the stopped server's store and index and checks that
// they hold exactly the chunks want, each once.
func checkDedup(t *testing.T, dataDir string, want map[engine.ChunkID]uint32) {
	t.Helper()
	store, err := index.OpenDirStore(filepath.Join(dataDir, "chunks"))
	if err != nil {
		t.Fatal(err)
	}
	stored := make(map[engine.ChunkID]int)
	err = store.Walk(context.Background(), func(id engine.ChunkID) error {
		stored[id]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for id, n := range stored {
		if _, ok := want[id]; !ok || n != 1 {
			t.Errorf("chunk %s stored %d times, in a pushed file: %v", id, n, ok)
		}
	}
	if len(stored) != len(want) {
		t.Errorf("store holds %d chunks, the pushed files %d distinct ones", len(stored), len(want))
	}
	db, err := index.OpenDB(filepath.Join(dataDir, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := db.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var raw int64
	for _, size := range want {
		raw += int64(size)
	}
	if st.Chunks != len(want) || st.RawBytes != raw || st.Sessions != 0 {
		t.Errorf("index: %d chunks of %d raw bytes, %d open sessions; the pushed files hold %d distinct chunks of %d bytes",
			st.Chunks, st.RawBytes, st.Sessions, len(want), raw)
	}
}
