package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestTokenNew(t *testing.T) {
	s := startServer(t)
	r := mustRun(t, "token", "new", "--data", s.data, "--name", "ci")
	token := strings.TrimSuffix(r.stdout, "\n")
	if token == "" || strings.ContainsAny(token, " \n") || r.stderr != "" {
		t.Fatalf("token new printed %q on stdout and %q on stderr; want the token alone", r.stdout, r.stderr)
	}
	if token == s.token {
		t.Fatal("token new returned an existing token")
	}
	// A running server accepts the new token at once.
	local := filepath.Join(t.TempDir(), "f")
	writeRandomFile(t, local, 1<<10, 9)
	mustRun(t, "push", "--server", s.addr, "--token", token, "--fingerprint", s.fp, local, "f")

	if r := run(t, "token", "new", "--data", s.data, "--name", "two words"); r.code != exitError || !strings.Contains(r.stderr, "one word") {
		t.Errorf("token with a bad name: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := run(t, "token", "new", "--data", s.data, "--name", "ci"); r.code != exitError || !strings.Contains(r.stderr, `"ci"`) || !strings.Contains(r.stderr, "already in use") {
		t.Errorf("token with a name in use: exit %d, stderr %q", r.code, r.stderr)
	}
}
