package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chunksync/chunksync/bench"
)

func TestParseTransferProfile(t *testing.T) {
	for _, c := range []struct {
		in   string
		want bench.TransferProfile
	}{
		{"200mbit 20ms 1%", bench.TransferProfile{Rate: 200e6, RTT: 20 * time.Millisecond, Loss: 0.01}},
		{" 1gbit  2ms 0 ", bench.TransferProfile{Rate: 1e9, RTT: 2 * time.Millisecond}},
		{"50mbit 100ms 5% burst 4", bench.TransferProfile{Rate: 50e6, RTT: 100 * time.Millisecond, Loss: 0.05, Burst: 4}},
		{"off 0s 0%", bench.TransferProfile{}},
	} {
		got, err := parseTransferProfile(c.in)
		if err != nil || got != c.want {
			t.Errorf("parseTransferProfile(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		// What a profile prints, it reads back.
		if back, err := parseTransferProfile(got.String()); err != nil || back != got {
			t.Errorf("profile %q printed as %q reads back as %+v, %v", c.in, got.String(), back, err)
		}
	}
	for _, in := range []string{"", "200mbit", "200mbit 20ms", "fast 20ms 1%", "200mbit soon 1%", "200mbit -1ms 1%", "200mbit 20ms 2", "200mbit 20ms 1% burst", "200mbit 20ms 1% burst 0.5", "200mbit 20ms 1% bursty 4"} {
		if _, err := parseTransferProfile(in); err == nil {
			t.Errorf("parseTransferProfile(%q) took it", in)
		}
	}
}

func TestBenchTransferUsageErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f.bin")
	writeRandomFile(t, file, 1<<10, 1)
	for _, args := range [][]string{
		{"--json", "--csv"},
		{"--profile", "200mbit 20ms 1%", "--loss", "2%"},
		{"--profile", "200mbit 20ms"},
		{"--loss", "150%"},
		{"--chunker", "nosuch"},
		{"--streams", "0"},
		{"--timeout", "0s"},
		{"--rate", "fast"},
		{"--tcp", "ftp"},
		{"--tcp", "none,tcp"},
	} {
		r := run(t, append([]string{"bench", "transfer", "--tcp", "none"}, append(args, file)...)...)
		if r.code != exitUsage {
			t.Errorf("bench transfer %s: exit %d, want %d (usage): %s", strings.Join(args, " "), r.code, exitUsage, r.stderr)
		}
	}
	if r := run(t, "bench", "transfer", "--size", "0"); r.code != exitUsage {
		t.Errorf("bench transfer --size 0: exit %d, want %d (usage): %s", r.code, exitUsage, r.stderr)
	}
	r := run(t, "bench", "transfer", "--tcp", "none", filepath.Join(t.TempDir(), "missing.bin"))
	if r.code != exitError || !strings.Contains(r.stderr, "missing.bin") {
		t.Errorf("a missing file: exit %d, %q; want exit %d naming the file", r.code, r.stderr, exitError)
	}
}

// TestBenchTransferJSON runs one small profile, generated data, without
// the TCP tools: a push and a pull, one JSON object each, with the fields scripts
// read.
func TestBenchTransferJSON(t *testing.T) {
	r := mustRun(t, "bench", "transfer", "--size", "1MiB", "--profile", "100mbit 4ms 1%", "--tcp", "none", "--json")
	var got []map[string]any
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		var v map[string]any
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		got = append(got, v)
	}
	if len(got) != 2 || got[0]["direction"] != "push" || got[1]["direction"] != "pull" {
		t.Fatalf("%d objects, want a push and a pull:\n%s", len(got), r.stdout)
	}
	for _, v := range got {
		for _, key := range []string{"profile", "chunker", "streams", "size", "seconds", "goodput_mbit", "wire_bytes_sent", "wire_bytes_received", "cpu_seconds"} {
			if _, ok := v[key]; !ok {
				t.Errorf("%s object lacks %q: %v", v["direction"], key, v)
			}
		}
		if v["profile"] != "100mbit 4ms 1%" || v["complete"] != true || number(t, v, "size") != 1<<20 || number(t, v, "streams") != 8 || number(t, v, "goodput_mbit") <= 0 {
			t.Errorf("%s: %v", v["direction"], v)
		}
	}
}

// TestBenchTransferWithTCP runs a lossless and a lossy profile on a file:
// tcp and rsync run through the IP-level link on both, the table compares
// them with chunksync, the CSV has a row per transfer and the HTML report
// is written.
func TestBenchTransferWithTCP(t *testing.T) {
	file := filepath.Join(t.TempDir(), "data.bin")
	writeRandomFile(t, file, 512<<10, 2)
	report := filepath.Join(t.TempDir(), "report")
	args := []string{"bench", "transfer", "--profile", "100mbit 4ms 0%", "--profile", "100mbit 4ms 2%", "--streams", "1,4", "--tcp", "tcp,rsync"}
	r := mustRun(t, append(args, "--report", report, file)...)
	for _, want := range []string{"Transfers", "Compared with TCP", "TCP MBIT/S", "RATIO TO RSYNC", "100mbit 4ms 2%", "verified"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	page, err := os.ReadFile(filepath.Join(report, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(page), "Goodput against loss") || !strings.Contains(string(page), "<svg") {
		t.Error("the report lacks the goodput-against-loss chart")
	}

	r = mustRun(t, append(args, "--csv", file)...)
	rows, err := csv.NewReader(strings.NewReader(r.stdout)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	// tcp and rsync, push and pull, on each of the two profiles;
	// chunksync push and pull for two stream counts on each.
	if len(rows) != 1+2*2*2+2*2*2 {
		t.Fatalf("%d CSV rows, want a header and 16:\n%s", len(rows), r.stdout)
	}
	tools := map[string]int{}
	for _, row := range rows[1:] {
		tools[row[0]]++
		if row[len(transferCSVColumns)-2] != "true" {
			t.Errorf("row %v: not complete", row)
		}
	}
	if tools["tcp"] != 4 || tools["rsync"] != 4 || tools["chunksync"] != 8 {
		t.Errorf("rows per tool %v, want tcp 4, rsync 4 and chunksync 8", tools)
	}
}

// TestBenchTransferWithoutTUN: where the IP-level link cannot be made, the
// default TCP tools are dropped with a note that says why, and TCP tools
// named by --tcp are an error.
func TestBenchTransferWithoutTUN(t *testing.T) {
	opts := benchTransferOptions{
		Size: 1 << 20, Seed: 1, Chunkers: []string{"fastcdc"}, Streams: []int{1}, Conns: []int{0}, FEC: []string{"auto"},
		Timeout: time.Minute, TCP: []string{"tcp"},
	}
	noTUN := func(context.Context) error { return errors.New("tun link: not permitted") }
	p, err := opts.plan(t.Context(), nil, false, false, noTUN)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.tcp) != 0 || len(p.notes) != 1 || !strings.Contains(p.notes[0], "not permitted") || !strings.Contains(p.notes[0], "tcp") {
		t.Errorf("defaults without the link: tools %v, notes %q; want none and a note saying why", p.tcp, p.notes)
	}
	if _, err := opts.plan(t.Context(), nil, false, true, noTUN); err == nil || !strings.Contains(err.Error(), "not permitted") {
		t.Errorf("--tcp tcp without the link: %v, want the link's error", err)
	}
	opts.TCP = []string{"none"}
	if p, err := opts.plan(t.Context(), nil, false, true, noTUN); err != nil || len(p.tcp) != 0 || len(p.notes) != 0 {
		t.Errorf("--tcp none: tools %v, notes %q, %v; want nothing", p.tcp, p.notes, err)
	}
}
