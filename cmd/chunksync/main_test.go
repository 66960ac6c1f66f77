package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chunksync/chunksync/transport"
)

// testTempDir is removed when the tests end: it holds the configuration
// and cache directories they use and the binary they build.
var testTempDir string

func TestMain(m *testing.M) {
	// Trust on first use must never touch the real known-servers file of
	// whoever runs the tests, and their environment must not leak in.
	dir, err := os.MkdirTemp("", "chunksync-test-config-")
	if err != nil {
		panic(err)
	}
	testTempDir = dir
	os.Setenv("XDG_CONFIG_HOME", dir)
	os.Setenv("XDG_CACHE_HOME", dir)
	for _, env := range []string{envServer, envToken, envFingerprint} {
		os.Unsetenv(env)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is what one in-process run of the command line produced.
type result struct {
	code           int
	stdout, stderr string
}

// run runs the command line args in-process through the cobra root.
func run(t *testing.T, args ...string) result {
	t.Helper()
	return runContext(t.Context(), args...)
}

func runContext(ctx context.Context, args ...string) result {
	var out, errOut syncBuffer
	code := execute(ctx, args, ioStreams{Out: &out, Err: &errOut})
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// mustRun runs args and fails the test unless they exit 0.
func mustRun(t *testing.T, args ...string) result {
	t.Helper()
	r := run(t, args...)
	if r.code != 0 {
		t.Fatalf("chunksync %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testServer is a real server running in the test process.
type testServer struct {
	addr, fp, token, data string
	// stop stops the server; it is also called at the end of the test.
	stop func()
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	return startServerAt(t, "127.0.0.1:0", t.TempDir())
}

// startServerAt starts a server listening on listen with data directory
// data, and creates a token for it.
func startServerAt(t *testing.T, listen, data string) *testServer {
	t.Helper()
	srv, err := transport.NewServer(transport.ServerConfig{DataDir: data, Listen: listen})
	// A server that just stopped on this address releases its socket only
	// when its last connection has finished closing.
	for deadline := time.Now().Add(5 * time.Second); err != nil && errors.Is(err, syscall.EADDRINUSE) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		srv, err = transport.NewServer(transport.ServerConfig{DataDir: data, Listen: listen})
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	s := &testServer{addr: srv.Addr().String(), fp: srv.Fingerprint(), data: data}
	s.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if err := srv.Close(); err != nil {
			t.Errorf("close server: %v", err)
		}
	})
	t.Cleanup(s.stop)
	if s.token, err = transport.NewToken(data, "test"); err != nil {
		t.Fatal(err)
	}
	return s
}

// flags are the connection flags that reach s with a pinned identity.
func (s *testServer) flags() []string {
	return []string{"--server", s.addr, "--token", s.token, "--fingerprint", s.fp}
}

// served is the path of the server's materialised copy of remotePath.
func (s *testServer) served(remotePath string) string {
	return filepath.Join(s.data, "files", filepath.FromSlash(remotePath))
}

// writeRandomFile writes size seeded pseudo-random (incompressible) bytes.
func writeRandomFile(t *testing.T, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.NewChaCha8(chachaSeed(seed)), size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// decodeJSON decodes the one JSON object in s.
func decodeJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decode JSON %q: %v", s, err)
	}
	return v
}

// number returns the JSON number v[key], failing when it is absent.
func number(t *testing.T, v map[string]any, key string) float64 {
	t.Helper()
	n, ok := v[key].(float64)
	if !ok {
		t.Fatalf("JSON field %q = %v (%T), want a number; object: %v", key, v[key], v[key], v)
	}
	return n
}

// sameFiles fails the test unless the files at a and b hold the same bytes.
func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	if _, _, err := compareFiles(a, b); err != nil {
		t.Fatal(err)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"unknown command", []string{"frobnicate"}},
		{"unknown flag", []string{"push", "--frob", "a", "b"}},
		{"too few arguments", []string{"push", "--token", "t", "a"}},
		{"too many arguments", []string{"push", "--token", "t", "a", "b", "c"}},
		{"bad bwlimit", []string{"push", "--token", "t", "--bwlimit", "fast", "a", "b"}},
		{"bad size", []string{"push", "--token", "t", "--avg", "1X", "a", "b"}},
		{"bad duration", []string{"status", "--token", "t", "--timeout", "soon"}},
		{"no token", []string{"push", "a", "b"}},
		{"unknown chunker", []string{"push", "--token", "t", "--chunker", "nope", "a", "b"}},
		{"chunk sizes out of order", []string{"push", "--token", "t", "--chunker", "fixed", "--avg", "0.5K", "--max", "1K", "a", "b"}},
		{"serve without data", []string{"serve"}},
		{"token new without data", []string{"token", "new"}},
		{"cancel without session", []string{"cancel", "--token", "t"}},
		{"status with argument", []string{"status", "--token", "t", "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, tt.args...)
			if r.code != exitUsage {
				t.Fatalf("exit %d, want %d\nstderr: %s", r.code, exitUsage, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "chunksync: ") || !strings.Contains(r.stderr, "--help") {
				t.Errorf("stderr %q: want a 'chunksync: ' message and a pointer to --help", r.stderr)
			}
		})
	}
}

func TestHelpExits0(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"push", "--help"}, {"help", "serve"}} {
		r := run(t, args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("%v: exit %d, stdout %q", args, r.code, r.stdout)
		}
	}
}

func TestExitCode(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	bg := context.Background()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want int
	}{
		{"nil", bg, nil, exitOK},
		{"plain", bg, io.ErrUnexpectedEOF, exitError},
		{"usage", bg, usagef("bad"), exitUsage},
		{"auth", bg, wrap(transport.ErrAuth), exitRefused},
		{"identity", bg, wrap(transport.ErrIdentity), exitRefused},
		{"unreachable", bg, wrap(transport.ErrUnreachable), exitUnreachable},
		{"interrupted", cancelled, wrap(transport.ErrUnreachable), exitInterrupted},
		{"push error keeps its cause", bg, &pushError{err: wrap(transport.ErrUnreachable)}, exitUnreachable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := exitCode(tt.ctx, tt.err); got != tt.want {
				t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

// wrap wraps err the way callers up the stack do.
func wrap(err error) error { return &wrapped{err} }

type wrapped struct{ err error }

func (w *wrapped) Error() string { return "push x: " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }
