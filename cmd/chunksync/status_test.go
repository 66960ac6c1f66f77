package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sessions returns what status --json lists.
func sessions(t *testing.T, s *testServer) []sessionStatus {
	t.Helper()
	r := mustRun(t, append([]string{"status", "--json"}, s.flags()...)...)
	var list []sessionStatus
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	return list
}

// interruptedPush starts a slow push of a new file, cancels its context
// once the server has stored some of it, and returns the file, the
// session the push left and the push's result.
func interruptedPush(t *testing.T, s *testServer, remotePath string) (string, sessionStatus, result) {
	t.Helper()
	local := filepath.Join(t.TempDir(), "slow.bin")
	const size = 16 << 20
	writeRandomFile(t, local, size, 7)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan result, 1)
	go func() {
		args := append([]string{"push", "--chunker", "fixed", "--avg", "128K", "--bwlimit", "4M"}, s.flags()...)
		done <- runContext(ctx, append(args, local, remotePath)...)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if list := sessions(t, s); len(list) == 1 && list[0].ChunksStored >= 4 {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("push ended before it was interrupted: exit %d, %s", r.code, r.stderr)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the server stored nothing of the push in 10s")
		}
	}
	cancel()
	r := <-done
	list := sessions(t, s)
	if len(list) != 1 {
		t.Fatalf("after the interrupted push, status lists %d sessions: %+v", len(list), list)
	}
	return local, list[0], r
}

func TestStatusAndCancelAfterInterruptedPush(t *testing.T) {
	s := startServer(t)
	if list := sessions(t, s); len(list) != 0 {
		t.Fatalf("new server lists sessions: %+v", list)
	}
	if r := mustRun(t, append([]string{"status"}, s.flags()...)...); !strings.Contains(r.stdout, "no open sessions") {
		t.Errorf("status on a new server: %q", r.stdout)
	}
	local, sess, r := interruptedPush(t, s, "slow.bin")
	if r.code != exitInterrupted {
		t.Fatalf("interrupted push: exit %d, want %d\nstderr: %s", r.code, exitInterrupted, r.stderr)
	}
	for _, want := range []string{"chunksync: ", "interrupted", sess.ID, "resume", "chunksync cancel " + sess.ID} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr %q lacks %q", r.stderr, want)
		}
	}
	if sess.Path != "slow.bin" || sess.Size != 16<<20 || sess.ChunksStored == 0 || sess.BytesStored == 0 ||
		sess.Missing != sess.Chunks-sess.ChunksStored || sess.BytesStored >= sess.Size {
		t.Errorf("session after interrupted push: %+v", sess)
	}

	human := mustRun(t, append([]string{"status"}, s.flags()...)...).stdout
	for _, want := range []string{"SESSION", "MISSING", sess.ID, "slow.bin", "16.0 MiB", "ago"} {
		if !strings.Contains(human, want) {
			t.Errorf("status lacks %q:\n%s", want, human)
		}
	}

	r = mustRun(t, append(append([]string{"cancel"}, s.flags()...), sess.ID)...)
	if !strings.Contains(r.stdout, sess.ID) {
		t.Errorf("cancel printed %q", r.stdout)
	}
	if list := sessions(t, s); len(list) != 0 {
		t.Errorf("after cancel, status lists %+v", list)
	}
	if r := run(t, append(append([]string{"cancel"}, s.flags()...), sess.ID)...); r.code != exitError || !strings.Contains(r.stderr, sess.ID) {
		t.Errorf("cancelling a cancelled session: exit %d, stderr %q", r.code, r.stderr)
	}

	// The chunks stay: pushing again sends only the rest.
	v := decodeJSON(t, mustRun(t, append(append([]string{"push", "--json", "--chunker", "fixed", "--avg", "128K"}, s.flags()...), local, "slow.bin")...).stdout)
	if raw := int64(number(t, v, "raw_bytes_sent")); raw > sess.Size-sess.BytesStored {
		t.Errorf("push after cancel sent %d bytes; %d of %d were stored already", raw, sess.BytesStored, sess.Size)
	}
	sameFiles(t, local, s.served("slow.bin"))
}

func TestInterruptedPushResumes(t *testing.T) {
	s := startServer(t)
	local, sess, r := interruptedPush(t, s, "resume.bin")
	if r.code != exitInterrupted {
		t.Fatalf("interrupted push: exit %d\nstderr: %s", r.code, r.stderr)
	}
	v := decodeJSON(t, mustRun(t, append(append([]string{"push", "--json", "--chunker", "fixed", "--avg", "128K"}, s.flags()...), local, "resume.bin")...).stdout)
	if v["session"] != sess.ID {
		t.Errorf("resumed push used session %v, want %s", v["session"], sess.ID)
	}
	if raw := int64(number(t, v, "raw_bytes_sent")); raw > sess.Size-sess.BytesStored {
		t.Errorf("resumed push sent %d bytes; %d of %d were stored already", raw, sess.BytesStored, sess.Size)
	}
	sameFiles(t, local, s.served("resume.bin"))
	if list := sessions(t, s); len(list) != 0 {
		t.Errorf("after the resumed push, status lists %+v", list)
	}
}
