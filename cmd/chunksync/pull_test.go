package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// overwrite writes n bytes of text at off into a copy of src at dst.
func overwrite(t *testing.T, src, dst string, off int64) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	copy(data[off:], strings.Repeat("a change in place ", 200))
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestPushPullVersionsGC(t *testing.T) {
	s := startServer(t)
	dir := t.TempDir()
	v1, v2 := filepath.Join(dir, "v1.img"), filepath.Join(dir, "v2.img")
	writeRandomFile(t, v1, 12<<20, 11)
	overwrite(t, v1, v2, 7<<20)
	push := append([]string{"push", "--json"}, s.flags()...)
	mustRun(t, append(push, v1, "images/disk.img")...)
	mustRun(t, append(push, v2, "images/disk.img")...)

	// Pull v2 onto a copy of v1 in another directory: only the change travels.
	elsewhere := t.TempDir()
	local := filepath.Join(elsewhere, "disk.img")
	data, err := os.ReadFile(v1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	pull := append([]string{"pull", "--json"}, s.flags()...)
	rep := decodeJSON(t, mustRun(t, append(pull, "images/disk.img", elsewhere+"/")...).stdout)
	sameFiles(t, local, v2)
	for _, key := range []string{"path", "local", "version", "size", "chunks", "chunks_reused", "bytes_reused",
		"chunks_fetched", "bytes_fetched", "wire_bytes_sent", "wire_bytes_received", "seconds", "blake3", "md5", "chunker"} {
		if _, ok := rep[key]; !ok {
			t.Errorf("pull --json lacks %q: %v", key, rep)
		}
	}
	if number(t, rep, "version") != 2 || number(t, rep, "bytes_reused") < 10<<20 || number(t, rep, "wire_bytes_received") > 2<<20 {
		t.Errorf("pull of v2 onto v1: %v", rep)
	}

	// A fresh pull of version 1 with v2 as a seed reuses nearly everything.
	fresh := filepath.Join(t.TempDir(), "old.img")
	rep = decodeJSON(t, mustRun(t, append(pull, "--version", "1", "--seed", v2, "images/disk.img", fresh)...).stdout)
	sameFiles(t, fresh, v1)
	if number(t, rep, "version") != 1 || number(t, rep, "bytes_reused") < 10<<20 {
		t.Errorf("pull of v1 seeded with v2: %v", rep)
	}

	var files []versionInfo
	if err := json.Unmarshal([]byte(mustRun(t, append([]string{"ls", "--json"}, append(s.flags(), "images/")...)...).stdout), &files); err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files[0].Path != "images/disk.img" || files[0].Version != 2 || files[0].Size != 12<<20 || len(files[0].BLAKE3) != 64 {
		t.Errorf("ls images/: %+v", files)
	}
	var versions []versionInfo
	if err := json.Unmarshal([]byte(mustRun(t, append([]string{"versions", "--json"}, append(s.flags(), "images/disk.img")...)...).stdout), &versions); err != nil {
		t.Fatal(err)
	}
	if len(versions) != 2 || versions[0].Version != 1 || versions[1].Version != 2 || versions[0].MD5 == versions[1].MD5 {
		t.Errorf("versions: %+v", versions)
	}
	table := mustRun(t, append([]string{"versions"}, append(s.flags(), "images/disk.img")...)...).stdout
	if !strings.Contains(table, "VERSION") || strings.Count(table, "images/disk.img") != 2 {
		t.Errorf("versions table:\n%s", table)
	}
	if r := run(t, append([]string{"versions"}, append(s.flags(), "nope")...)...); r.code != exitError || !strings.Contains(r.stderr, "not found") {
		t.Errorf("versions of an unknown path: exit %d, %s", r.code, r.stderr)
	}

	gc := decodeJSON(t, mustRun(t, append([]string{"gc", "--json"}, s.flags()...)...).stdout)
	if number(t, gc, "versions") != 2 || number(t, gc, "chunks_deleted") != 0 {
		t.Errorf("gc with every version kept: %v", gc)
	}
}

func TestPullErrors(t *testing.T) {
	s := startServer(t)
	dir := t.TempDir()
	r := run(t, append([]string{"pull", "--json"}, append(s.flags(), "missing.bin", dir)...)...)
	if r.code != exitError || !strings.Contains(r.stderr, "not found") {
		t.Errorf("pull of an unknown path: exit %d, %s", r.code, r.stderr)
	}
	if f := decodeJSON(t, r.stdout); f["error"] == nil || number(t, f, "exit_code") != exitError {
		t.Errorf("pull --json failure: %v", f)
	}
	if r := run(t, append([]string{"pull"}, append(s.flags(), "--seed", filepath.Join(dir, "nope"), "a", "b")...)...); r.code != exitError || !strings.Contains(r.stderr, "--seed") {
		t.Errorf("pull with a missing seed: exit %d, %s", r.code, r.stderr)
	}
}
