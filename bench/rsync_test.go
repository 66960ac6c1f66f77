package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// newRsyncServer skips the test when rsync is not installed (.ci/test
// installs it).
func newRsyncServer(tb testing.TB) *RsyncServer {
	tb.Helper()
	if _, err := exec.LookPath("rsync"); err != nil {
		tb.Fatal("rsync is not installed: the re-sync comparisons need it (.ci/test installs it)")
	}
	s, err := NewRsyncServer(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func TestRsyncCountsTheWire(t *testing.T) {
	s := newRsyncServer(t)
	ctx := context.Background()
	local := t.TempDir()
	const size = 1 << 20
	random := filepath.Join(local, "random.bin")
	if err := WriteRandomFile(random, size, 7); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(random)
	if err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, path string) {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s differs from what was sent", path)
		}
	}

	// Incompressible and new on the other side: the whole file crosses,
	// plus a little protocol.
	tr, err := s.Push(ctx, random, "f.bin")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("new file: up %d down %d literal %d compress %q in %v", tr.Up, tr.Down, tr.Literal, tr.Compress, tr.Wall)
	if tr.Up < size || tr.Up > size+size/20 || tr.Down > 4<<10 || tr.Literal != size {
		t.Fatalf("push of a new %d-byte random file: up %d, down %d, literal %d", size, tr.Up, tr.Down, tr.Literal)
	}
	check(t, filepath.Join(s.Dir(), "f.bin"))

	// Unchanged: block checksums one way, matches the other, no data.
	tr, err = s.Push(ctx, random, "f.bin")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("unchanged: up %d down %d matched %d", tr.Up, tr.Down, tr.Matched)
	if tr.Total() > size/50 || tr.Matched != size || tr.Literal != 0 {
		t.Fatalf("push of an unchanged file: up %d, down %d, matched %d, literal %d", tr.Up, tr.Down, tr.Matched, tr.Literal)
	}
	check(t, filepath.Join(s.Dir(), "f.bin"))

	// Pull onto a copy with one byte changed: the checksums go up, one
	// block comes down.
	pulled := filepath.Join(local, "pulled.bin")
	changed := bytes.Clone(want)
	changed[size/2] ^= 1
	if err := os.WriteFile(pulled, changed, 0o644); err != nil {
		t.Fatal(err)
	}
	tr, err = s.Pull(ctx, "f.bin", pulled)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pull of one changed byte: up %d down %d literal %d", tr.Up, tr.Down, tr.Literal)
	if tr.Total() > size/20 || tr.Literal == 0 || tr.Literal > 64<<10 || tr.Up < tr.Down {
		t.Fatalf("pull onto a copy with one byte changed: up %d, down %d, literal %d", tr.Up, tr.Down, tr.Literal)
	}
	check(t, pulled)
}

func TestRsyncReportsFailure(t *testing.T) {
	s := newRsyncServer(t)
	if _, err := s.Pull(context.Background(), "missing.bin", filepath.Join(t.TempDir(), "x")); err == nil {
		t.Fatal("pull of a file the module lacks succeeded")
	}
}
