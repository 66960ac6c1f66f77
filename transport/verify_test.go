package transport

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/chunksync/chunksync/index"
)

// verifyData runs VerifyData on dir and returns the kinds of the problems.
func verifyData(t *testing.T, dir string) []index.ProblemKind {
	t.Helper()
	var kinds []index.ProblemKind
	_, err := VerifyData(t.Context(), VerifyConfig{DataDir: dir}, func(p index.Problem) {
		t.Logf("problem: %s", p)
		kinds = append(kinds, p.Kind)
	})
	if err != nil {
		t.Fatal(err)
	}
	return kinds
}

func TestVerifyDataFiles(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, ServerConfig{DataDir: dir})
	c := ts.client(t)
	local := writeFile(t, 3<<20, 61)
	push(t, c, local, "d/a.bin")
	push(t, c, writeFile(t, 1<<20, 62), "d/b.bin")
	c.Close()

	_, err := VerifyData(t.Context(), VerifyConfig{DataDir: dir}, func(index.Problem) {})
	if !errors.Is(err, ErrServerRunning) {
		t.Fatalf("verify while the server runs: %v, want ErrServerRunning", err)
	}
	ts.stop()
	if got := verifyData(t, dir); len(got) != 0 {
		t.Fatalf("verify after clean pushes: %v", got)
	}

	a, b := filepath.Join(dir, "files", "d", "a.bin"), filepath.Join(dir, "files", "d", "b.bin")
	f, err := os.OpenFile(a, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{'!'}, 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Remove(b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "files", "d", tempPrefix+"0"), []byte("half a commit"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := []index.ProblemKind{index.ProblemTempFile, ProblemFileMismatch, ProblemFileMissing}
	if got := verifyData(t, dir); !slices.Equal(got, want) {
		t.Errorf("problems %v, want %v", got, want)
	}
}

// A second server on a running server's data directory must fail before
// it removes anything: the temporary files are the running server's
// chunk writes and commits in progress.
func TestSecondServerLeavesTempFiles(t *testing.T) {
	dir := t.TempDir()
	startServer(t, ServerConfig{DataDir: dir})
	temps := []string{
		filepath.Join(dir, chunksDir, "tmp", "put-inflight"),
		filepath.Join(dir, "files", tempPrefix+"inflight"),
	}
	for _, name := range temps {
		if err := os.WriteFile(name, []byte("in flight"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := NewServer(ServerConfig{DataDir: dir, Listen: "127.0.0.1:0"})
	if err == nil {
		srv.Close()
		t.Fatal("a second server opened a running server's data directory")
	}
	if !errors.Is(err, index.ErrLocked) {
		t.Errorf("second server: %v, want ErrLocked", err)
	}
	for _, name := range temps {
		if _, err := os.Stat(name); err != nil {
			t.Errorf("the second server removed the running one's %s: %v", name, err)
		}
	}
}
