package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
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

// TestRsyncThroughAShapedLink: the relay holds rsync to the rate and the
// delay it is given, and the file still arrives whole.
func TestRsyncThroughAShapedLink(t *testing.T) {
	s := newRsyncServer(t)
	const (
		size  = 2 << 20
		rate  = 40e6 // bits per second
		delay = 10 * time.Millisecond
	)
	random := filepath.Join(t.TempDir(), "random.bin")
	if err := WriteRandomFile(random, size, 8); err != nil {
		t.Fatal(err)
	}
	bare, err := s.Push(context.Background(), random, "bare.bin")
	if err != nil {
		t.Fatal(err)
	}
	s.SetShape(TCPShape{Rate: rate, Delay: delay})
	tr, err := s.Push(context.Background(), random, "shaped.bin")
	if err != nil {
		t.Fatal(err)
	}
	// The data alone takes size*8/rate; rsync's exchanges before it add
	// round trips, so allow time above, but none below. The bound above
	// only catches a relay that loses time with every segment: on a
	// loaded machine rsync itself may take twice as long.
	least := time.Duration(float64(size*8)/rate*float64(time.Second)) + 2*delay
	most := 10*least + bare.Wall
	t.Logf("%d bytes: %v on loopback, %v at %.0f Mbit/s and %v each way (at least %v)", size, bare.Wall, tr.Wall, rate/1e6, delay, least)
	if tr.Wall < least || tr.Wall > most {
		t.Errorf("shaped push took %v, want from %v to %v", tr.Wall, least, most)
	}
	want, err := os.ReadFile(random)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(s.Dir(), "shaped.bin"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("shaped push: the module's copy differs (%v)", err)
	}
}
