package transport

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
)

// mountTmpfs mounts a tmpfs of the given size on a new directory; it needs
// root (CI runs as root, as it installs packages).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small file system to fill needs root; CI runs this as root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

func TestServerDiskFull(t *testing.T) {
	dataDir := mountTmpfs(t, "40m")
	ts := startServer(t, ServerConfig{DataDir: dataDir})
	c := ts.client(t)

	small := writeFile(t, 4<<20, 11)
	push(t, c, small, "keep.bin")
	before, _ := os.ReadFile(filepath.Join(ts.cfg.FilesDir, "keep.bin"))

	// 64 MiB of incompressible data cannot fit in what is left.
	big := writeFile(t, 64<<20, 12)
	_, err := engine.Push(context.Background(), c, big, "big.bin", engine.PushOptions{Chunker: rabin(t)})
	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("push onto a full disk: %v", err)
	}
	// Nothing lost: the earlier file is intact, every stored chunk reads
	// back verified, no partial file appeared.
	after, _ := os.ReadFile(filepath.Join(ts.cfg.FilesDir, "keep.bin"))
	if !bytes.Equal(before, after) {
		t.Fatal("a full disk damaged an earlier file")
	}
	if _, err := os.Stat(filepath.Join(ts.cfg.FilesDir, "big.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial file on a full disk: %v", err)
	}
	stored := 0
	err = ts.store.Walk(context.Background(), func(id engine.ChunkID) error {
		stored++
		_, err := ts.store.Get(context.Background(), id, nil)
		return err
	})
	if err != nil {
		t.Fatalf("chunk store after a full disk: %v", err)
	}

	// Space comes back: the same push resumes and completes.
	growTmpfs(t, dataDir)
	res := push(t, c, big, "big.bin")
	sameContent(t, ts, big, "big.bin")
	if res.ChunksSent >= len(res.Manifest.Chunks) {
		t.Fatalf("resumed push re-sent all %d chunks; %d were stored before the disk filled", res.ChunksSent, stored)
	}
}

func TestCommitDiskFull(t *testing.T) {
	dataDir := mountTmpfs(t, "40m")
	ts := startServer(t, ServerConfig{DataDir: dataDir})
	c := ts.client(t)
	old := writeFile(t, 2<<20, 13)
	push(t, c, old, "f.bin")

	// The chunks fit; the reassembled copy beside them does not.
	big := writeFile(t, 22<<20, 14)
	_, err := engine.Push(context.Background(), c, big, "f.bin", engine.PushOptions{Chunker: rabin(t)})
	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("commit onto a full disk: %v", err)
	}
	sameContent(t, ts, old, "f.bin")
	entries, _ := os.ReadDir(ts.cfg.FilesDir)
	if len(entries) != 1 {
		t.Fatalf("files root holds %d entries after a failed commit, want 1", len(entries))
	}

	growTmpfs(t, dataDir)
	res := push(t, c, big, "f.bin")
	sameContent(t, ts, big, "f.bin")
	if res.ChunksSent != 0 {
		t.Fatalf("commit retry re-sent %d chunks", res.ChunksSent)
	}
}

// growTmpfs gives a tmpfs from mountTmpfs room again.
func growTmpfs(t *testing.T, dir string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,size=256m", dir).CombinedOutput(); err != nil {
		t.Fatalf("grow tmpfs: %v: %s", err, out)
	}
}

// TestPullDiskFull: a pull onto a client disk too small for the new
// version fails saying so, leaves the old copy in place and intact, and,
// once there is room, resumes from what its partial file holds.
func TestPullDiskFull(t *testing.T) {
	dir := mountTmpfs(t, "16m")
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	src := writeFile(t, 24<<20, 16)
	res := push(t, c, src, "big.bin")

	dst := filepath.Join(dir, "big.bin")
	old := bytes.Repeat([]byte("old copy "), 1<<18) // 2.25 MiB
	if err := os.WriteFile(dst, old, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := engine.Pull(t.Context(), c, res.Manifest, dst, engine.PullOptions{})
	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("pull onto a full disk: %v", err)
	}
	if got := c.Stats().Connections; got > c.plain {
		// One per stream: a full disk is no reason to drop a connection
		// and ask again.
		t.Errorf("pull onto a full disk made %d connections for %d streams", got, c.plain)
	}
	if got, err := os.ReadFile(dst); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("a pull onto a full disk changed the old copy: %v", err)
	}

	growTmpfs(t, dir)
	again, err := engine.Pull(t.Context(), c, res.Manifest, dst, engine.PullOptions{})
	if err != nil {
		t.Fatalf("pull once there is room: %v", err)
	}
	sameFile(t, dst, src)
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("%d entries beside the pulled file, want none", len(entries)-1)
	}
	if again.Resumed == 0 {
		t.Errorf("the pull after a full disk fetched all %d bytes again; its partial file held some", again.BytesFetched)
	}
}

// A disk that fills during a push stops the files assembled during pushes,
// which hold space the chunks need: the push fails saying why, no partial
// file stays, and once there is room again the push completes.
func TestDiskFullDropsAssembly(t *testing.T) {
	dataDir := mountTmpfs(t, "40m")
	ts := startServer(t, ServerConfig{DataDir: dataDir})
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.BWLimit = 4 << 20 })
	if err != nil {
		t.Fatal(err)
	}
	local := writeFile(t, 12<<20, 15)
	done := make(chan error, 1)
	go func() {
		_, err := engine.Push(context.Background(), c, local, "f.bin", engine.PushOptions{Chunker: rabin(t)})
		done <- err
	}()
	// Once the assembly has written something, fill the disk.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if sizes := tempFilesOf(t, ts); len(sizes) == 1 && sizes[0] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no assembly during the push after 10 s")
		}
	}
	filler := filepath.Join(dataDir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 64<<10)
	for {
		if _, err := f.Write(block); err != nil {
			break
		}
	}
	f.Close()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("push onto a disk that filled: %v", err)
	}
	if sizes := tempFilesOf(t, ts); len(sizes) != 0 {
		t.Fatalf("temporary files of %v bytes after the disk filled", sizes)
	}
	if _, err := os.Stat(filepath.Join(ts.cfg.FilesDir, "f.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial file after the disk filled: %v", err)
	}
	os.Remove(filler)
	push(t, c, local, "f.bin")
	sameContent(t, ts, local, "f.bin")
}
