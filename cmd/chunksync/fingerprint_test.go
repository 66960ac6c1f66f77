package main

import (
	"strings"
	"testing"
)

func TestFingerprint(t *testing.T) {
	s := startServer(t)
	r := mustRun(t, "fingerprint", "--data", s.data)
	if r.stdout != s.fp+"\n" {
		t.Errorf("fingerprint printed %q, want %q", r.stdout, s.fp)
	}
	empty := t.TempDir()
	r = run(t, "fingerprint", "--data", empty)
	if r.code != exitError || !strings.Contains(r.stderr, "start the server") {
		t.Errorf("fingerprint of a data dir without identity: exit %d, stderr %q", r.code, r.stderr)
	}
}
