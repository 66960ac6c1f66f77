package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// The loopback benchmarks run every party in its own process, as a real
// deployment does: the test binary starts itself again with childEnv naming
// the part to play, so that each process's CPU and peak RSS are its own.
const childEnv = "CHUNKSYNC_BENCH_CHILD"

func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		if err := runChild(role); err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childResult is what a child prints as its last line.
type childResult struct {
	Addr, Fingerprint, Token string
	Seconds                  float64
	WireSent                 uint64
	ChunksSent               int
}

func runChild(role string) error {
	if prof := os.Getenv("CHUNKSYNC_BENCH_CPUPROFILE"); prof != "" {
		f, err := os.Create(prof + "." + role)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if prof := os.Getenv("CHUNKSYNC_BENCH_MEMPROFILE"); prof != "" {
		done := make(chan struct{})
		defer close(done)
		go peakHeapProfile(prof+"."+role, done)
	}
	out := json.NewEncoder(os.Stdout)
	switch role {
	case "server":
		dir := os.Getenv("CHUNKSYNC_BENCH_DIR")
		token, err := transport.NewToken(dir, "bench")
		if err != nil {
			return err
		}
		srv, err := transport.NewServer(transport.ServerConfig{DataDir: dir, Listen: "127.0.0.1:0"})
		if err != nil {
			return err
		}
		defer srv.Close()
		out.Encode(childResult{Addr: srv.Addr().String(), Fingerprint: srv.Fingerprint(), Token: token})
		return srv.Serve(ctx)
	case "rawsink":
		cert, err := transport.LoadIdentity(os.Getenv("CHUNKSYNC_BENCH_DIR"))
		if err != nil {
			return err
		}
		sink, err := ListenRawQUIC("127.0.0.1:0", cert)
		if err != nil {
			return err
		}
		out.Encode(childResult{Addr: sink.Addr().String()})
		return sink.Serve(ctx)
	case "rawsend":
		size, _ := strconv.ParseInt(os.Getenv("CHUNKSYNC_BENCH_SIZE"), 10, 64)
		buf := make([]byte, 4<<20)
		rand.NewChaCha8([32]byte{1}).Read(buf)
		d, err := SendRawQUIC(ctx, os.Getenv("CHUNKSYNC_BENCH_ADDR"), size, buf)
		if err != nil {
			return err
		}
		return out.Encode(childResult{Seconds: d.Seconds()})
	case "push":
		var srv childResult
		if err := json.Unmarshal([]byte(os.Getenv("CHUNKSYNC_BENCH_SERVER")), &srv); err != nil {
			return err
		}
		c, err := transport.Dial(ctx, transport.ClientConfig{Addr: srv.Addr, Token: srv.Token, Fingerprint: srv.Fingerprint})
		if err != nil {
			return err
		}
		defer c.Close()
		k, err := engine.LookupChunker(os.Getenv("CHUNKSYNC_BENCH_CHUNKER"))
		if err != nil {
			return err
		}
		res, err := engine.Push(ctx, c, os.Getenv("CHUNKSYNC_BENCH_FILE"), "bench.bin", engine.PushOptions{Chunker: k.Defaults})
		if err != nil {
			return err
		}
		return out.Encode(childResult{Seconds: res.Duration.Seconds(), WireSent: c.Stats().BytesSent, ChunksSent: res.ChunksSent})
	}
	return fmt.Errorf("unknown role %q", role)
}

// child is a running child process.
type child struct {
	cmd    *exec.Cmd
	result childResult
}

// startChild starts role and waits for its first line of output.
func startChild(b *testing.B, role string, env ...string) *child {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, childEnv+"="+role)...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c := &child{cmd: cmd}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		b.Fatalf("%s: no output: %v", role, err)
	}
	if err := json.Unmarshal([]byte(line), &c.result); err != nil {
		b.Fatalf("%s: %q: %v", role, line, err)
	}
	return c
}

// wait waits for the child to exit (after SIGTERM when stop) and returns
// its peak RSS in MiB.
func (c *child) wait(b *testing.B, stop bool) float64 {
	b.Helper()
	if stop {
		c.cmd.Process.Signal(syscall.SIGTERM)
	}
	if err := c.cmd.Wait(); err != nil {
		b.Fatalf("%s: %v", c.cmd.Env[len(c.cmd.Env)-1], err)
	}
	ru := c.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return float64(ru.Maxrss) / 1024
}

// cpuSeconds is the user and system time a finished child used.
func (c *child) cpuSeconds() float64 {
	return c.cmd.ProcessState.UserTime().Seconds() + c.cmd.ProcessState.SystemTime().Seconds()
}

// benchSize is the file size of the loopback benchmarks: 1 GiB unless
// CHUNKSYNC_BENCH_SIZE says otherwise (for example 4GiB to check that
// memory does not grow with the file).
func benchSize(b *testing.B) int64 {
	s := os.Getenv("CHUNKSYNC_BENCH_SIZE")
	if s == "" {
		return 1 << 30
	}
	n, err := parseSize(s)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n * mult, err
}

// BenchmarkLoopbackPush pushes an incompressible file over loopback QUIC
// between two processes and compares it, in the same run, with one bare
// quic-go stream between two processes carrying the same number of bytes.
// It reports both rates, their ratio, the peak RSS of push client and
// server, and the wire bytes of a re-push of the unchanged file as a
// percentage of its size.
//
//	go test -run '^$' -bench LoopbackPush -benchtime 1x ./bench/
func BenchmarkLoopbackPush(b *testing.B) {
	size := benchSize(b)
	dir := b.TempDir()
	file := filepath.Join(dir, "incompressible.bin")
	if err := WriteRandomFile(file, size, 1); err != nil {
		b.Fatal(err)
	}
	chunker := os.Getenv("CHUNKSYNC_BENCH_CHUNKER")
	if chunker == "" {
		chunker = engine.DefaultCDC
	}
	sizeEnv := "CHUNKSYNC_BENCH_SIZE=" + strconv.FormatInt(size, 10)
	b.SetBytes(size)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		sink := startChild(b, "rawsink", "CHUNKSYNC_BENCH_DIR="+filepath.Join(dir, fmt.Sprint("sink", i)))
		send := startChild(b, "rawsend", sizeEnv, "CHUNKSYNC_BENCH_ADDR="+sink.result.Addr)
		send.wait(b, false)
		sink.wait(b, true)
		rawRate := float64(size) / send.result.Seconds / 1e6

		data := filepath.Join(dir, fmt.Sprint("server", i))
		srv := startChild(b, "server", "CHUNKSYNC_BENCH_DIR="+data)
		srvJSON, _ := json.Marshal(srv.result)
		pushEnv := []string{"CHUNKSYNC_BENCH_SERVER=" + string(srvJSON), "CHUNKSYNC_BENCH_FILE=" + file, "CHUNKSYNC_BENCH_CHUNKER=" + chunker}
		push := startChild(b, "push", pushEnv...)
		clientRSS := push.wait(b, false)
		clientCPU := push.cpuSeconds()
		repush := startChild(b, "push", pushEnv...)
		repush.wait(b, false)
		serverRSS := srv.wait(b, true)
		pushRate := float64(size) / push.result.Seconds / 1e6
		if repush.result.ChunksSent != 0 {
			b.Fatalf("re-push of an unchanged file sent %d chunks", repush.result.ChunksSent)
		}

		b.ReportMetric(rawRate, "raw-MB/s")
		b.ReportMetric(pushRate, "push-MB/s")
		b.ReportMetric(pushRate/rawRate, "push/raw")
		b.ReportMetric(clientRSS, "client-peak-MiB")
		b.ReportMetric(serverRSS, "server-peak-MiB")
		b.ReportMetric(clientCPU, "client-cpu-s")
		b.ReportMetric(100*float64(repush.result.WireSent)/float64(size), "repush-wire-%")
		os.RemoveAll(data)
	}
}

// peakHeapProfile writes a heap profile to path whenever the live heap
// reaches a new peak, until done is closed.
func peakHeapProfile(path string, done <-chan struct{}) {
	var peak uint64
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapAlloc <= peak {
			continue
		}
		peak = ms.HeapAlloc
		if f, err := os.Create(path); err == nil {
			pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
}
