package main

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// serveBanner matches the two lines serve prints on stdout at start.
var serveBanner = regexp.MustCompile(`listening on (\S+)\nfingerprint (sha256:[0-9a-f]{64})\n`)

func TestServeInProcess(t *testing.T) {
	data := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, []string{"serve", "--data", data, "--listen", "127.0.0.1:0", "--session-idle", "1h", "--chunk-cache", "0", "--stall-timeout", "5s", "--max-conns-per-token", "8"}, ioStreams{Out: &out, Err: &errOut})
	}()
	var m []string
	for deadline := time.Now().Add(10 * time.Second); m == nil; {
		if m = serveBanner.FindStringSubmatch(out.String()); m != nil {
			break
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited %d: %s", code, errOut.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve printed no banner in 10s: %q", out.String())
		}
	}
	addr, fp := m[1], m[2]
	if got := strings.TrimSpace(mustRun(t, "fingerprint", "--data", data).stdout); got != fp {
		t.Errorf("fingerprint command says %s, serve said %s", got, fp)
	}
	token := strings.TrimSpace(mustRun(t, "token", "new", "--data", data, "--name", "laptop").stdout)

	local := filepath.Join(t.TempDir(), "f")
	writeRandomFile(t, local, 100<<10, 8)
	mustRun(t, "push", "--server", addr, "--token", token, "--fingerprint", fp, local, "f")
	sameFiles(t, local, filepath.Join(data, "files", "f"))

	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("serve stopped with exit %d: %s", code, errOut.String())
	}
	logs := errOut.String()
	for _, want := range []string{"level=INFO", "serving", "stopped"} {
		if !strings.Contains(logs, want) {
			t.Errorf("serve's log lacks %q:\n%s", want, logs)
		}
	}
}

func TestServeRefusesBusyAddress(t *testing.T) {
	s := startServer(t)
	r := run(t, "serve", "--data", t.TempDir(), "--listen", s.addr)
	if r.code != exitError || !strings.Contains(r.stderr, s.addr) {
		t.Errorf("serve on a busy address: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestServeRefusesLimits(t *testing.T) {
	data := t.TempDir()
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--memory", "1M"}, "--memory 1048576: need at least"},
		{[]string{"--max-streams", "2"}, "at least 3"},
		{[]string{"--stall-timeout", "0s"}, "positive durations"},
		{[]string{"--commit-wait", "0s"}, "positive durations"},
		{[]string{"--max-sessions-per-token", "0"}, "need at least 1"},
		{[]string{"--max-manifest-chunks", "16777217"}, "need 1 to 16777216"},
	} {
		r := run(t, append([]string{"serve", "--data", data, "--listen", "127.0.0.1:0"}, tc.flags...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("serve %v: exit %d, stderr %q, want usage error with %q", tc.flags, r.code, r.stderr, tc.want)
		}
	}
}
