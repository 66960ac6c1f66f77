package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTrustOnFirstUse(t *testing.T) {
	s := startServer(t)
	local := filepath.Join(t.TempDir(), "f")
	writeRandomFile(t, local, 64<<10, 5)
	known := filepath.Join(t.TempDir(), "conf", "known_servers")
	tofu := []string{"push", "--server", s.addr, "--token", s.token, "--known-servers", known, local, "f"}

	r := mustRun(t, tofu...)
	if !strings.Contains(r.stderr, "trusted "+s.addr+" on first use") || !strings.Contains(r.stderr, s.fp) {
		t.Errorf("first use: stderr %q, want a note naming the server and its fingerprint", r.stderr)
	}
	data, err := os.ReadFile(known)
	if err != nil {
		t.Fatalf("known-servers file not created: %v", err)
	}
	if want := s.addr + " " + s.fp; strings.TrimSpace(string(data)) != want {
		t.Fatalf("known servers = %q, want %q", data, want)
	}
	if r := mustRun(t, tofu...); r.stderr != "" { // the remembered identity is accepted
		t.Errorf("second use: stderr %q, want nothing", r.stderr)
	}

	// Another server, with another identity, on the same address.
	s.stop()
	impostor := startServerAt(t, s.addr, t.TempDir())
	tofu[4] = impostor.token
	r = run(t, tofu...)
	if r.code != exitRefused {
		t.Fatalf("changed identity: exit %d, want %d\nstderr: %s", r.code, exitRefused, r.stderr)
	}
	if !strings.Contains(r.stderr, "CHANGED") || !strings.Contains(r.stderr, known) {
		t.Errorf("stderr %q: want it to say the identity changed and name %s", r.stderr, known)
	}
	if got, _ := os.ReadFile(known); string(got) != string(data) {
		t.Errorf("known servers rewritten to %q", got)
	}
}

func TestDefaultKnownServersFile(t *testing.T) {
	s := startServer(t)
	local := filepath.Join(t.TempDir(), "f")
	writeRandomFile(t, local, 1<<10, 6)
	config := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", config)
	mustRun(t, "push", "--server", s.addr, "--token", s.token, local, "f")
	data, err := os.ReadFile(filepath.Join(config, "chunksync", "known_servers"))
	if err != nil || !strings.Contains(string(data), s.fp) {
		t.Fatalf("default known-servers file: %q, %v", data, err)
	}
}
