package main

import (
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zeebo/blake3"
)

func TestPushThenRepushSendsNothing(t *testing.T) {
	s := startServer(t)
	local := filepath.Join(t.TempDir(), "big.bin")
	const size = 8 << 20
	writeRandomFile(t, local, size, 1)

	args := append([]string{"push", "--json"}, s.flags()...)
	first := decodeJSON(t, mustRun(t, append(args, local, "dir/big.bin")...).stdout)
	for _, key := range []string{"path", "size", "chunks", "chunks_sent", "bytes_sent", "raw_bytes_sent",
		"wire_bytes_sent", "wire_bytes_received", "seconds", "blake3", "md5", "session", "version", "chunker"} {
		if _, ok := first[key]; !ok {
			t.Errorf("push --json lacks %q: %v", key, first)
		}
	}
	if first["path"] != "dir/big.bin" || number(t, first, "size") != size || number(t, first, "version") != 1 {
		t.Errorf("first push: %v", first)
	}
	if chunks, sent := number(t, first, "chunks"), number(t, first, "chunks_sent"); chunks < 1 || sent != chunks {
		t.Errorf("first push sent %v of %v chunks, want all", sent, chunks)
	}
	if raw := number(t, first, "raw_bytes_sent"); raw != size {
		t.Errorf("first push raw_bytes_sent = %v, want %d", raw, size)
	}
	if wire := number(t, first, "wire_bytes_sent"); wire < size {
		t.Errorf("first push wire_bytes_sent = %v, less than the %d bytes of random data", wire, size)
	}
	data, err := os.ReadFile(local)
	if err != nil {
		t.Fatal(err)
	}
	sum := blake3.Sum256(data)
	if first["blake3"] != hex.EncodeToString(sum[:]) {
		t.Errorf("blake3 = %v, want %x", first["blake3"], sum)
	}
	sameFiles(t, local, s.served("dir/big.bin"))

	second := decodeJSON(t, mustRun(t, append(args, local, "dir/big.bin")...).stdout)
	if sent := number(t, second, "chunks_sent"); sent != 0 {
		t.Errorf("second push sent %v chunks, want 0", sent)
	}
	if wire := number(t, second, "wire_bytes_sent"); wire >= size/100 {
		t.Errorf("second push put %v bytes on the wire, want under 1%% of %d", wire, size)
	}
	if number(t, second, "version") != 2 || second["blake3"] != first["blake3"] {
		t.Errorf("second push: %v", second)
	}
}

func TestPushHumanSummary(t *testing.T) {
	s := startServer(t)
	local := filepath.Join(t.TempDir(), "small.bin")
	writeRandomFile(t, local, 300<<10, 2)
	r := mustRun(t, append(append([]string{"push"}, s.flags()...), local, "up/")...)
	for _, want := range []string{"pushed " + local, "as up/small.bin", "version 1", "300.0 KiB", "chunks", "wire", "blake3", "md5", "session"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, r.stdout)
		}
	}
	if r.stderr != "" {
		t.Errorf("stderr is not a terminal, yet got %q", r.stderr)
	}
	sameFiles(t, local, s.served("up/small.bin"))

	if r := mustRun(t, append(append([]string{"push", "-q"}, s.flags()...), local, "up/")...); r.stdout != "" || r.stderr != "" {
		t.Errorf("push -q printed %q, %q", r.stdout, r.stderr)
	}
}

func TestPushEmptyFile(t *testing.T) {
	s := startServer(t)
	local := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(local, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	v := decodeJSON(t, mustRun(t, append(append([]string{"push", "--json"}, s.flags()...), local, "empty")...).stdout)
	if number(t, v, "size") != 0 || number(t, v, "chunks") != 0 {
		t.Errorf("empty push: %v", v)
	}
	sameFiles(t, local, s.served("empty"))
}

func TestPushEnvPrecedence(t *testing.T) {
	s := startServer(t)
	local := filepath.Join(t.TempDir(), "f")
	writeRandomFile(t, local, 64<<10, 3)
	closed := closedPort(t)

	tests := []struct {
		name string
		env  map[string]string
		args []string
		want int
	}{
		{"env only", map[string]string{envServer: s.addr, envToken: s.token, envFingerprint: s.fp}, nil, exitOK},
		{"flag beats env server", map[string]string{envServer: closed, envToken: s.token, envFingerprint: s.fp}, []string{"--server", s.addr}, exitOK},
		{"flag beats env token", map[string]string{envServer: s.addr, envToken: "cs_wrong", envFingerprint: s.fp}, []string{"--token", s.token}, exitOK},
		{"flag beats env fingerprint", map[string]string{envServer: s.addr, envToken: s.token, envFingerprint: "sha256:00"}, []string{"--fingerprint", s.fp}, exitOK},
		{"env server used", map[string]string{envServer: closed, envToken: s.token, envFingerprint: s.fp}, []string{"--timeout", "300ms"}, exitUnreachable},
		{"env token used", map[string]string{envServer: s.addr, envToken: "cs_wrong", envFingerprint: s.fp}, nil, exitRefused},
		{"env fingerprint used", map[string]string{envServer: s.addr, envToken: s.token, envFingerprint: "sha256:00"}, nil, exitRefused},
		{"default server", map[string]string{envToken: s.token, envFingerprint: s.fp}, []string{"--timeout", "300ms"}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			r := run(t, append(append([]string{"push", "--json"}, tt.args...), local, "f")...)
			switch {
			case tt.want >= 0 && r.code != tt.want:
				t.Fatalf("exit %d, want %d\nstderr: %s", r.code, tt.want, r.stderr)
			case tt.want < 0:
				// Nothing listens on the default address in tests (or
				// something else does): what matters is that it was tried.
				if r.code == exitOK || !strings.Contains(r.stderr, defaultServer) {
					t.Fatalf("exit %d, stderr %q: want a failure naming %s", r.code, r.stderr, defaultServer)
				}
			}
		})
	}
}

func TestPushRefusedAndUnreachable(t *testing.T) {
	s := startServer(t)
	local := filepath.Join(t.TempDir(), "f")
	writeRandomFile(t, local, 64<<10, 4)
	other := startServer(t)

	tests := []struct {
		name    string
		args    []string
		want    int
		mention string
	}{
		{"wrong token", []string{"--server", s.addr, "--token", other.token, "--fingerprint", s.fp}, exitRefused, s.addr},
		{"wrong fingerprint", []string{"--server", s.addr, "--token", s.token, "--fingerprint", other.fp}, exitRefused, s.addr},
		{"unreachable", []string{"--server", closedPort(t), "--token", s.token, "--fingerprint", s.fp, "--timeout", "500ms"}, exitUnreachable, "unreachable"},
		{"missing local file", append(s.flags(), "--timeout", "500ms"), exitError, "nope.bin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := local
			if tt.name == "missing local file" {
				file = filepath.Join(t.TempDir(), "nope.bin")
			}
			start := time.Now()
			r := run(t, append(append([]string{"push", "--json"}, tt.args...), file, "f")...)
			if r.code != tt.want {
				t.Fatalf("exit %d, want %d\nstderr: %s", r.code, tt.want, r.stderr)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
			if !strings.HasPrefix(r.stderr, "chunksync: ") || !strings.Contains(r.stderr, tt.mention) {
				t.Errorf("stderr %q: want a 'chunksync: ' message naming %q", r.stderr, tt.mention)
			}
			v := decodeJSON(t, r.stdout)
			if msg, _ := v["error"].(string); msg == "" || number(t, v, "exit_code") != float64(tt.want) {
				t.Errorf("--json failure object %v: want an error and exit_code %d", v, tt.want)
			}
		})
	}
}

// closedPort returns a loopback UDP address that nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

func TestRemoteName(t *testing.T) {
	tests := []struct{ local, remote, want string }{
		{"a/b.img", "x/c.img", "x/c.img"},
		{"a/b.img", "x/", "x/b.img"},
		{"a/b.img", ".", "b.img"},
		{"b.img", "./", "b.img"},
	}
	for _, tt := range tests {
		if got := remoteName(tt.local, tt.remote); got != tt.want {
			t.Errorf("remoteName(%q, %q) = %q, want %q", tt.local, tt.remote, got, tt.want)
		}
	}
}

func TestPushAutoStrategy(t *testing.T) {
	s := startServer(t)
	dir := t.TempDir()
	gz := filepath.Join(dir, "data.gz")
	writeRandomFile(t, gz, 2<<20, 5)
	f, err := os.OpenFile(gz, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0x1f, 0x8b, 0x08, 0x00}, 0)
	f.Close()
	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte(strings.Repeat("a line of text that compresses well\n", 60000)), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"push", "--json"}, s.flags()...)
	rep := decodeJSON(t, mustRun(t, append(args, gz, "data.gz")...).stdout)
	if rep["content"] != "gzip" || !strings.Contains(rep["reason"].(string), "uncompressed") ||
		number(t, rep, "bytes_sent") != number(t, rep, "raw_bytes_sent") {
		t.Errorf("auto push of gzip data: %v", rep)
	}
	rep = decodeJSON(t, mustRun(t, append(args, text, "notes.txt")...).stdout)
	if rep["content"] != "text" || strings.Contains(rep["reason"].(string), "uncompressed") ||
		number(t, rep, "bytes_sent")*10 > number(t, rep, "raw_bytes_sent") {
		t.Errorf("auto push of text: %v", rep)
	}
	if r := run(t, append(append([]string{"push"}, s.flags()...), "--avg", "1M", text, "x")...); r.code != exitUsage || !strings.Contains(r.stderr, "--chunker") {
		t.Errorf("auto with --avg: exit %d, %s", r.code, r.stderr)
	}
}
