package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestBinary builds the real binary and runs serve, token, push and status
// as separate processes, killing and interrupting pushes part-way.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := buildChunksync(t)
	data := filepath.Join(dir, "data")
	addr, fp, stopServer := startServeProcess(t, bin, data)
	tokenOut, err := exec.Command(bin, "token", "new", "--data", data).Output()
	if err != nil {
		t.Fatalf("token new: %v", err)
	}
	conn := []string{"--server", addr, "--token", strings.TrimSpace(string(tokenOut)), "--fingerprint", fp}
	// Random data does not compress, so chunk bytes and payload agree;
	// 256 KiB chunks keep what is in flight at a kill small.
	chunking := []string{"--chunker", "fixed", "--avg", "256K"}

	t.Run("kill push mid-transfer then resume", func(t *testing.T) {
		local := filepath.Join(dir, "big.bin")
		const size = 64 << 20
		writeRandomFile(t, local, size, 10)
		push := exec.Command(bin, append(append(append([]string{"push", "--bwlimit", "24M"}, conn...), chunking...), local, "big.bin")...)
		done := startProcess(t, push)
		sess := waitStored(t, bin, conn, done, size*6/10)
		if err := push.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-done

		out, err := exec.Command(bin, append(append(append([]string{"push", "--json"}, conn...), chunking...), local, "big.bin")...).Output()
		if err != nil {
			t.Fatalf("push after kill: %v\n%s", err, stderrOf(err))
		}
		v := decodeJSON(t, string(out))
		if v["session"] != sess.ID {
			t.Errorf("push after kill used session %v, want the killed push's %s", v["session"], sess.ID)
		}
		resent := int64(number(t, v, "raw_bytes_sent")) - (size - sess.BytesStored)
		t.Logf("killed at %d of %d bytes stored; the next push sent %v bytes (%d again)", sess.BytesStored, size, v["raw_bytes_sent"], resent)
		if resent > size/10 {
			t.Errorf("push after kill re-sent %d bytes that status reported stored, want under 10%% of %d", resent, size)
		}
		if sent := int64(number(t, v, "bytes_sent")); sent > size-sess.BytesStored+size/10 {
			t.Errorf("push after kill sent %d payload bytes; %d of %d were stored", sent, sess.BytesStored, size)
		}
		sameFiles(t, local, filepath.Join(data, "files", "big.bin"))
	})

	t.Run("SIGINT exits 3 and leaves a session", func(t *testing.T) {
		local := filepath.Join(dir, "int.bin")
		const size = 16 << 20
		writeRandomFile(t, local, size, 11)
		push := exec.Command(bin, append(append(append([]string{"push", "--bwlimit", "4M"}, conn...), chunking...), local, "int.bin")...)
		var stderr strings.Builder
		push.Stderr = &stderr
		done := startProcess(t, push)
		sess := waitStored(t, bin, conn, done, 1)
		if err := push.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		err := <-done
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitInterrupted {
			t.Fatalf("interrupted push: %v, want exit %d\nstderr: %s", err, exitInterrupted, stderr.String())
		}
		if msg := stderr.String(); !strings.Contains(msg, "resume") || !strings.Contains(msg, sess.ID) {
			t.Errorf("interrupted push said %q", msg)
		}
		if out, err := exec.Command(bin, append(append([]string{"cancel"}, conn...), sess.ID)...).CombinedOutput(); err != nil {
			t.Errorf("cancel %s: %v\n%s", sess.ID, err, out)
		}
	})

	t.Run("exit codes", func(t *testing.T) {
		tests := []struct {
			args []string
			want int
		}{
			{[]string{"push", "--server", addr, "--token", "cs_wrong", "--fingerprint", fp, bin, "x"}, exitRefused},
			{[]string{"push", "--frob"}, exitUsage},
			{[]string{"status", "--server", closedPort(t), "--token", "t", "--fingerprint", fp, "--timeout", "300ms"}, exitUnreachable},
		}
		for _, tt := range tests {
			err := exec.Command(bin, tt.args...).Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tt.want {
				t.Errorf("chunksync %v: %v, want exit %d", tt.args, err, tt.want)
			}
		}
	})

	if err := stopServer(); err != nil {
		t.Errorf("serve did not stop cleanly on SIGTERM: %v", err)
	}
}

// startServeProcess runs "chunksync serve" on a free port and reads its
// address and fingerprint from its stdout. stop sends SIGTERM and waits
// for the exit.
func startServeProcess(t *testing.T, bin, data string) (addr, fp string, stop func() error) {
	t.Helper()
	p := startServe(t, bin, nil, "--data", data, "--listen", "127.0.0.1:0")
	return p.addr, p.fp, p.stop
}

// serveProcess is a "chunksync serve" process.
type serveProcess struct {
	cmd      *exec.Cmd
	addr, fp string
	// done receives the process's Wait result once it has exited.
	done chan error
	logs *syncBuffer
}

// startServe runs "chunksync serve args..." with env added to the
// environment and waits until it has printed its address and fingerprint.
// The test's cleanup kills it if it still runs, and prints its log if the
// test failed.
func startServe(t *testing.T, bin string, env []string, args ...string) *serveProcess {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &serveProcess{cmd: cmd, done: make(chan error, 1), logs: new(syncBuffer)}
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("serve's log:\n%s", p.logs.String())
		}
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if a, ok := strings.CutPrefix(line, "listening on "); ok {
			p.addr = a
		}
		if f, ok := strings.CutPrefix(line, "fingerprint "); ok {
			p.fp = f
			break
		}
	}
	go func() {
		for sc.Scan() {
		}
		p.done <- cmd.Wait()
	}()
	if p.addr == "" || p.fp == "" {
		err := <-p.done
		t.Fatalf("serve printed no address and fingerprint (%v); log:\n%s", err, p.logs.String())
	}
	return p
}

// stop sends SIGTERM and waits for the exit.
func (p *serveProcess) stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		return err
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		return errors.New("still running 10s after SIGTERM")
	}
}

// kill sends SIGKILL and waits for the exit.
func (p *serveProcess) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// startProcess starts cmd and returns a channel that gets its Wait error.
func startProcess(t *testing.T, cmd *exec.Cmd) <-chan error {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return done
}

// waitStored polls "chunksync status --json" until the one open session
// has at least bytes stored, and returns it. It fails the test when the
// push exits first (done delivers) or after a deadline.
func waitStored(t *testing.T, bin string, conn []string, done <-chan error, bytes int64) sessionStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		out, err := exec.Command(bin, append([]string{"status", "--json"}, conn...)...).Output()
		if err != nil {
			t.Fatalf("status: %v\n%s", err, stderrOf(err))
		}
		var list []sessionStatus
		if err := json.Unmarshal(out, &list); err != nil {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		if len(list) == 1 && list[0].BytesStored >= bytes {
			return list[0]
		}
		select {
		case err := <-done:
			t.Fatalf("push exited (%v) before %d bytes were stored", err, bytes)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("no session stored %d bytes within 20s", bytes)
	return sessionStatus{}
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// buildChunksync builds the chunksync binary, once per test process, and
// returns its path.
func buildChunksync(t *testing.T) string {
	t.Helper()
	bin, err := builtBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// builtBinary builds the binary into the tests' temporary directory.
var builtBinary = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(testTempDir, "bin", "chunksync")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})
