package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDemo(t *testing.T) {
	dir := t.TempDir()
	r := mustRun(t, "demo", "--dir", dir, "--size", "12MiB")
	for _, want := range []string{"first push", "second push", "chunks sent", "wire bytes sent", "matches the local file", "byte for byte"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("demo output lacks %q:\n%s", want, r.stdout)
		}
	}
	// The second push sends its changed chunks as deltas against those
	// they replaced: KiB, where the chunks themselves are about a MiB.
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.Contains(line, "bytes sent (zstd or delta)") && !strings.HasSuffix(line, "KiB") {
			t.Errorf("second push did not send deltas: %q", line)
		}
	}
	local, served := filepath.Join(dir, "local", "sample.bin"), filepath.Join(dir, "files", "sample.bin")
	sameFiles(t, local, served)
	fi, err := os.Stat(local)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(12<<20) + 1000; fi.Size() != want {
		t.Errorf("modified sample has %d bytes, want %d", fi.Size(), want)
	}
}

func TestDemoRunsAgainInItsDir(t *testing.T) {
	dir := t.TempDir()
	for range 3 {
		mustRun(t, "demo", "--dir", dir, "--size", "1MiB", "-q")
	}
}

func TestDemoRemovesItsTempDir(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	mustRun(t, "demo", "--size", "1MiB", "-q")
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("demo left %v in its temporary directory", left)
	}
}

func TestSampleIsSeeded(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	for _, f := range []struct {
		path string
		seed uint64
	}{{a, 1}, {b, 1}, {c, 2}} {
		if err := writeSample(t.Context(), f.path, 3<<20, f.seed); err != nil {
			t.Fatal(err)
		}
	}
	sameFiles(t, a, b)
	if _, _, err := compareFiles(a, c); err == nil {
		t.Error("samples with different seeds are identical")
	}
}
