package main

import (
	"encoding/csv"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/chunksync/chunksync/bench"
)

// chunkersFiles writes two versions of a seeded random file, the second
// with an insertion, and returns their paths.
func chunkersFiles(t *testing.T) (old, new string) {
	t.Helper()
	dir := t.TempDir()
	old, new = filepath.Join(dir, "old.bin"), filepath.Join(dir, "new.bin")
	if err := bench.WriteRandomFile(old, 256<<10, 11); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(old)
	if err != nil {
		t.Fatal(err)
	}
	b = slices.Concat(b[:100<<10], []byte("inserted"), b[100<<10:])
	if err := os.WriteFile(new, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return old, new
}

// benchChunkersArgs are a small grid in one pass: two chunkers at two
// sizes, old as a file and the pair old:new.
func benchChunkersArgs(old, new string, more ...string) []string {
	return append([]string{"bench", "chunkers", "--chunkers", "fastcdc,fixed", "--sizes", "16K,64KiB", "--min-time", "0", old, "--pairs", old + ":" + new}, more...)
}

func TestBenchChunkersTable(t *testing.T) {
	old, new := chunkersFiles(t)
	out := mustRun(t, benchChunkersArgs(old, new)...).stdout
	for _, want := range []string{
		"Chunking", "All files", "Re-sync", "rsync -z",
		"CUT MB/S", "CUT+BLAKE3 MB/S", "DEDUP", "CHUNKS+LIST BYTES", "DELTA ESTIMATE BYTES", "RSYNC -Z BYTES", "CHUNKS+LIST / RSYNC",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// A row per file, chunker and size; old.bin is a FILE and in the pair
	// and is measured once.
	rows := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "old.bin ") || strings.HasPrefix(line, "new.bin ") {
			rows++
		}
	}
	if want := 2*2*2 + 2*2 + 1; rows != want {
		t.Errorf("%d rows of files, pairs and rsync runs, want %d:\n%s", rows, want, out)
	}
}

func TestBenchChunkersJSON(t *testing.T) {
	old, new := chunkersFiles(t)
	out := mustRun(t, benchChunkersArgs(old, new, "--json", "--rsync=false")...).stdout
	dec := json.NewDecoder(strings.NewReader(out))
	var res bench.ChunkersResult
	if err := dec.Decode(&res); err != nil {
		t.Fatal(err)
	}
	if dec.More() {
		t.Errorf("more than one JSON document:\n%s", out)
	}
	if len(res.Runs) != 2*2*2 || len(res.Totals) != 2*2 || len(res.Pairs) != 2*2 || len(res.Rsync) != 0 {
		t.Fatalf("%d runs, %d totals, %d pair runs, %d rsync runs", len(res.Runs), len(res.Totals), len(res.Pairs), len(res.Rsync))
	}
	for _, p := range res.Pairs {
		if p.Old != old || p.New != new || p.DeltaEstimateBytes == nil || p.RsyncBytes != 0 || p.PlainBytes <= p.ListBytes {
			t.Errorf("pair run %+v", p)
		}
	}
	for _, r := range res.Runs {
		if r.Passes != 1 {
			t.Errorf("%s %s: %d passes with --min-time 0", r.File, r.ChunkerSetting, r.Passes)
		}
	}
}

func TestBenchChunkersCSV(t *testing.T) {
	old, new := chunkersFiles(t)
	out := mustRun(t, benchChunkersArgs(old, new, "--csv", "--delta-max-file", "0")...).stdout
	records, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(records) == 0 || !slices.Equal(records[0], chunkersCSVColumns) {
		t.Fatalf("header %q, want %q", records[0], chunkersCSVColumns)
	}
	col := func(name string) int { return slices.Index(chunkersCSVColumns, name) }
	kinds := map[string]int{}
	for _, r := range records[1:] {
		kinds[r[col("kind")]]++
		switch r[col("kind")] {
		case "file":
			if r[col("file")] == "" || r[col("dedup_ratio")] == "" || r[col("p50_size")] == "" {
				t.Errorf("file row %q", r)
			}
		case "pair":
			// rsync is installed (.ci/test installs it); no estimates
			// with --delta-max-file 0.
			if r[col("plain_bytes")] == "" || r[col("rsync_bytes")] == "" || r[col("plain_rsync_ratio")] == "" || r[col("delta_estimate_bytes")] != "" {
				t.Errorf("pair row %q", r)
			}
		}
	}
	if want := map[string]int{"file": 2 * 2 * 2, "all_files": 2 * 2, "pair": 2 * 2}; !maps.Equal(kinds, want) {
		t.Errorf("rows by kind %v, want %v", kinds, want)
	}
}

func TestBenchChunkersErrors(t *testing.T) {
	old, new := chunkersFiles(t)
	missing := filepath.Join(t.TempDir(), "missing.bin")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"nothing to measure", []string{}, exitUsage, "at least one FILE"},
		{"missing file", []string{missing}, exitError, missing},
		{"pair without a colon", []string{"--pairs", old}, exitUsage, "want OLD:NEW"},
		{"pair without new", []string{"--pairs", old + ":"}, exitUsage, "want OLD:NEW"},
		{"pair with a missing file", []string{"--pairs", old + ":" + missing}, exitError, missing},
		{"unknown chunker", []string{"--chunkers", "fastcdc,gear", old}, exitUsage, `unknown chunker "gear"`},
		{"size rabin refuses", []string{"--chunkers", "rabin", "--sizes", "12K", old}, exitUsage, "--sizes 12K: chunker rabin refuses it"},
		{"size too large", []string{"--sizes", "8M", new}, exitUsage, "--sizes 8M"},
		{"size not a size", []string{"--sizes", "12Q", old}, exitUsage, `invalid size "12Q"`},
		{"json and csv", []string{"--json", "--csv", old}, exitUsage, "--json and --csv"},
		{"module without versions", []string{"--module", "golang.org/x/sync"}, exitUsage, "want MODULE@V1,V2"},
		{"module with one version", []string{"--module", "golang.org/x/sync@v0.25.0"}, exitUsage, "want MODULE@V1,V2"},
		{"module that does not exist", []string{"--module", "example.invalid/none@v1.0.0,v1.0.1", "--min-time", "0"}, exitError, "example.invalid/none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, append([]string{"bench", "chunkers"}, tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
				t.Errorf("exit %d, stderr %q, stdout %q; want exit %d and an error naming %q", r.code, r.stderr, r.stdout, tc.code, tc.want)
			}
		})
	}
}

// TestBenchChunkersModule measures two releases of a small Go module,
// fetched through the module proxy as tars, and writes the HTML report.
func TestBenchChunkersModule(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	report := filepath.Join(t.TempDir(), "report")
	r := mustRun(t, "bench", "chunkers", "--module", "golang.org/x/sync@v0.24.0,v0.25.0", "--chunkers", "fastcdc",
		"--sizes", "16K", "--min-time", "0", "--rsync=false", "--report", report, "--json")
	var res bench.ChunkersResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Pairs) != 1 || !strings.HasSuffix(res.Pairs[0].Old, "golang.org_x_sync@v0.24.0.tar") || !strings.HasSuffix(res.Pairs[0].New, "golang.org_x_sync@v0.25.0.tar") {
		t.Fatalf("pairs %+v, want v0.24.0 with v0.25.0", res.Pairs)
	}
	if p := res.Pairs[0]; p.NewBytes == 0 || p.PlainBytes == 0 || p.PlainBytes >= p.NewBytes {
		t.Errorf("pair %+v: a release re-synced onto the one before should cost less than itself", p)
	}
	page, err := os.ReadFile(filepath.Join(report, "index.html"))
	if err != nil || !strings.Contains(string(page), "<svg") {
		t.Errorf("report: %v", err)
	}
}
