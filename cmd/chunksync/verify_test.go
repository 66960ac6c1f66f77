package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// verifiedData pushes two files to a new server, stops it and returns its
// data directory.
func verifiedData(t *testing.T) *testServer {
	t.Helper()
	s := startServer(t)
	dir := t.TempDir()
	for i, name := range []string{"a.bin", "b.bin"} {
		local := filepath.Join(dir, name)
		writeRandomFile(t, local, 2<<20, uint64(60+i))
		mustRun(t, append(append([]string{"push"}, s.flags()...), local, "v/"+name)...)
	}
	r := run(t, "verify", "--data", s.data)
	if r.code != exitError || !strings.Contains(r.stderr, "server is running") {
		t.Errorf("verify of a running server's data: exit %d, stderr %q; want %d and a refusal", r.code, r.stderr, exitError)
	}
	s.stop()
	return s
}

func TestVerifyCommand(t *testing.T) {
	s := verifiedData(t)
	r := mustRun(t, "verify", "--data", s.data)
	if !strings.Contains(r.stdout, ": 0 problems") || !strings.Contains(r.stderr, "checking chunks") {
		t.Errorf("clean verify said\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}

	// One damage of each kind the server's files can suffer.
	chunks, err := filepath.Glob(filepath.Join(s.data, "chunks", "??", "*"))
	if err != nil || len(chunks) < 3 {
		t.Fatalf("chunk files %v: %v", chunks, err)
	}
	data, err := os.ReadFile(chunks[0])
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(chunks[0], data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(chunks[1]); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(chunks[2], 5); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.data, "chunks", "tmp", "put-left"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.served("v/a.bin"), []byte("not the version"), 0o644); err != nil {
		t.Fatal(err)
	}

	r = run(t, "verify", "--json", "--data", s.data)
	if r.code != exitProblems {
		t.Fatalf("verify of damaged data: exit %d, want %d\nstderr: %s", r.code, exitProblems, r.stderr)
	}
	var rep verifyReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("verify --json: %v\n%s", err, r.stdout)
	}
	found := map[string]int{}
	for _, p := range rep.Problems {
		found[p.Kind]++
	}
	for kind, n := range map[string]int{"chunk-corrupt": 2, "chunk-missing": 1, "temp-file": 1, "file-mismatch": 1} {
		if found[kind] != n {
			t.Errorf("%d problems of kind %s, want %d; report %+v", found[kind], kind, n, rep.Problems)
		}
	}
	if found["version-content"] == 0 || rep.Clean || rep.Versions != 2 || rep.Files != 2 {
		t.Errorf("report %+v: want damaged versions, not clean, 2 versions and 2 files checked", rep)
	}

	// --quick leaves the versions' content alone, nothing else.
	r = run(t, "verify", "--quick", "--data", s.data)
	if r.code != exitProblems || strings.Contains(r.stdout, "version-content") || !strings.Contains(r.stdout, "file-mismatch") {
		t.Errorf("verify --quick: exit %d\n%s", r.code, r.stdout)
	}
}

func TestVerifyNoDataDirectory(t *testing.T) {
	if r := run(t, "verify", "--data", t.TempDir()); r.code != exitError || !strings.Contains(r.stderr, "index.db") {
		t.Errorf("verify of an empty directory: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := run(t, "verify"); r.code != exitUsage {
		t.Errorf("verify without --data: exit %d, want %d", r.code, exitUsage)
	}
}
