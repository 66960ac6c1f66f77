package bench

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// benchCacheDir is where the benchmarks keep downloads between runs:
// $CHUNKSYNC_BENCH_CACHE, or chunksync-bench in the user's cache directory.
func benchCacheDir(tb testing.TB) string {
	if dir := os.Getenv("CHUNKSYNC_BENCH_CACHE"); dir != "" {
		return dir
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		tb.Fatalf("no cache directory for the module downloads (set CHUNKSYNC_BENCH_CACHE): %v", err)
	}
	return filepath.Join(dir, "chunksync-bench")
}

// xtoolsTars writes the tars of XToolsVersions to dir. It needs the go
// command and the module proxy (or a warm cache), and skips in -short mode.
func xtoolsTars(tb testing.TB, dir string) []string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs the Go module proxy")
	}
	paths, err := ModuleTars(context.Background(), benchCacheDir(tb), dir, XTools, XToolsVersions...)
	if err != nil {
		tb.Fatal(err)
	}
	return paths
}

func TestModuleTarsAreDeterministic(t *testing.T) {
	first := xtoolsTars(t, t.TempDir())
	second := xtoolsTars(t, t.TempDir())
	for i, v := range XToolsVersions {
		a, err := os.ReadFile(first[i])
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(second[i])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("%s: two builds differ", v)
		}
		if len(a) < 4<<20 {
			t.Fatalf("%s: tar of %d bytes, want several MB", v, len(a))
		}
		// Sorted names without the module prefix, and nothing of the
		// machine that built it.
		tr := tar.NewReader(bytes.NewReader(a))
		prev := ""
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Name <= prev {
				t.Fatalf("%s: %q after %q", v, h.Name, prev)
			}
			if h.Mode != 0o644 || h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(tarModTime) {
				t.Fatalf("%s: %q has mode %o, owner %d:%d, time %v", v, h.Name, h.Mode, h.Uid, h.Gid, h.ModTime)
			}
			prev = h.Name
		}
		if prev == "" {
			t.Fatalf("%s: empty tar", v)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(first[0]), "go.mod")); err == nil {
		t.Fatal("ModuleTars left a go.mod behind")
	}
}
