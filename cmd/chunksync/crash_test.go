package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
	"github.com/chunksync/chunksync/transport"
)

// The crash test's environment: CHUNKSYNC_CRASH_SEED replays a run (every
// run logs its seed), CHUNKSYNC_CRASH_POINTS sets how many kills it makes
// (default crashPointsCI).
const (
	envCrashSeed   = "CHUNKSYNC_CRASH_SEED"
	envCrashPoints = "CHUNKSYNC_CRASH_POINTS"
	crashPointsCI  = 20
	// crashFileSize is the size of every version of the file the test
	// pushes; crashChange the bytes each new version rewrites.
	crashFileSize = 4 << 20
	crashChange   = 1 << 20
	crashPath     = "crash/file.bin"
	// recoveryBound bounds how long a client takes to finish once the
	// server it lost is back: one that sends notices the restart at its
	// next packet, one that waits for replies at its next heartbeat
	// (about a second). Its idle timeout, 20 s, must play no part.
	recoveryBound = 10 * time.Second
)

// Phases of the crash test: which process dies, and where.
const (
	phaseClientPush   = "client mid-push"
	phaseClientPull   = "client mid-pull"
	phaseServerWrite  = "server mid-chunk-write"
	phaseServerCommit = "server mid-commit"
	phaseServerGC     = "server mid-gc"
)

// TestCrashConsistency runs the real binaries, a server and its clients,
// and kills one of them with SIGKILL at seeded random points: the client
// in the middle of a push or a pull, the server while it writes chunks
// (with a chunk's file half written, or at a random moment of a push), in
// a commit or in a garbage collection (at named points, through
// CHUNKSYNC_CRASH_AT). After each kill it restarts what died and resumes
// (a client the server's crash left waiting must resume by itself, within
// recoveryBound of the restart), then checks that the server's file is
// the last version pushed, byte for byte, that "chunksync verify" finds
// nothing wrong and that no temporary file is left. Meanwhile a reader
// reads the server's file over and over: it must always hold a whole
// version, the one before the push in progress or that push's.
func TestCrashConsistency(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and kills it many times")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(envCrashSeed); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", envCrashSeed, s, err)
		}
	}
	points := crashPointsCI
	if s := os.Getenv(envCrashPoints); s != "" {
		var err error
		if points, err = strconv.Atoi(s); err != nil || points < 1 {
			t.Fatalf("%s=%q: want a positive count", envCrashPoints, s)
		}
	}
	t.Logf("seed %d (%s=%d replays this run), %d kill points", seed, envCrashSeed, seed, points)

	dir := t.TempDir()
	d := &crashDriver{
		t:    t,
		rng:  rand.New(rand.NewPCG(seed, 6)),
		bin:  buildChunksync(t),
		dir:  dir,
		data: filepath.Join(dir, "data"),
		addr: freeUDPAddr(t),
		hits: map[string]map[string]int{},
	}
	d.startServer()
	token, err := transport.NewToken(d.data, "crash")
	if err != nil {
		t.Fatal(err)
	}
	d.conn = []string{"--server", d.addr, "--token", token, "--fingerprint", d.srv.fp}
	d.pushNext(nil)

	stopReader := d.startReader()
	phases := []string{phaseClientPush, phaseClientPull, phaseServerWrite, phaseServerCommit, phaseServerGC}
	var order []string
	for i := range points {
		// Every round of len(phases) points covers each phase once, in a
		// seeded order.
		if i%len(phases) == 0 {
			order = slices.Clone(phases)
			d.rng.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
		}
		phase := order[i%len(phases)]
		start := time.Now()
		var outcome string
		switch phase {
		case phaseClientPush:
			outcome = d.killClientPush()
		case phaseClientPull:
			outcome = d.killClientPull()
		case phaseServerWrite:
			outcome = d.killServerWrite()
		case phaseServerCommit:
			outcome = d.killServerCommit()
		case phaseServerGC:
			outcome = d.killServerGC()
		}
		d.hit(phase, outcome)
		d.check()
		t.Logf("kill %d/%d: %s: %s, recovered and verified in %.1f s", i+1, points, phase, outcome, time.Since(start).Seconds())
		if t.Failed() {
			break
		}
	}
	reads := stopReader()
	if err := d.srv.stop(); err != nil {
		t.Errorf("serve did not stop cleanly: %v", err)
	}
	t.Logf("the reader read the server's file %d times, always a whole version", reads)
	if n := len(d.recoveries); n > 0 {
		var sum time.Duration
		for _, r := range d.recoveries {
			sum += r
		}
		t.Logf("clients the server's crash had interrupted ended %.1f s after its restart on average, %.1f s at most (%d restarts, bound %v)",
			(sum / time.Duration(n)).Seconds(), slices.Max(d.recoveries).Seconds(), n, recoveryBound)
	}
	for _, phase := range phases {
		var parts []string
		total := 0
		for outcome, n := range d.hits[phase] {
			parts = append(parts, fmt.Sprintf("%s %d", outcome, n))
			total += n
		}
		slices.Sort(parts)
		t.Logf("%-22s %2d kills survived: %s", phase, total, strings.Join(parts, ", "))
	}
}

// crashDriver runs the server and the clients of the crash test and knows
// which versions the server's file may hold.
type crashDriver struct {
	t    *testing.T
	rng  *rand.Rand
	bin  string
	dir  string
	data string
	addr string
	conn []string
	srv  *serveProcess

	// versions are the local files of the versions pushed, in order;
	// latest is the version number the server gave the last one.
	versions []string
	sums     [][32]byte
	latest   int

	// allowed holds the digests the server's file may have now: the
	// last version and, while a push runs, the one it pushes. Before
	// the first push the file may be missing.
	mu      sync.Mutex
	allowed [][32]byte

	hits map[string]map[string]int
	// recoveries are the times from a server's restart to the end of
	// the client it had left waiting.
	recoveries []time.Duration
}

func (d *crashDriver) hit(phase, outcome string) {
	if d.hits[phase] == nil {
		d.hits[phase] = map[string]int{}
	}
	d.hits[phase][outcome]++
}

// startServer starts the server on the driver's address, with env added
// to its environment. It keeps two versions per path, so that every push
// leaves garbage for a collection to find.
func (d *crashDriver) startServer(env ...string) {
	d.t.Helper()
	d.srv = startServe(d.t, d.bin, env, "--data", d.data, "--listen", d.addr, "--keep", "2")
}

// served is the server's file of the test's path.
func (d *crashDriver) served() string {
	return filepath.Join(d.data, "files", filepath.FromSlash(crashPath))
}

// nextVersion writes the next version of the file: the last one with a
// few seeded regions rewritten, or random bytes for the first.
func (d *crashDriver) nextVersion() string {
	d.t.Helper()
	var data []byte
	if len(d.versions) == 0 {
		data = make([]byte, crashFileSize)
	} else {
		var err error
		if data, err = os.ReadFile(d.versions[len(d.versions)-1]); err != nil {
			d.t.Fatal(err)
		}
	}
	regions, size := 1, len(data)
	if len(d.versions) > 0 {
		regions, size = 8, crashChange/8
	}
	for range regions {
		off := d.rng.IntN(len(data) - size + 1)
		for i := off; i < off+size; i += 8 {
			v := d.rng.Uint64()
			for j := 0; j < 8 && i+j < off+size; j++ {
				data[i+j] = byte(v >> (8 * j))
			}
		}
	}
	name := filepath.Join(d.dir, fmt.Sprintf("v%d.bin", len(d.versions)+1))
	if err := os.WriteFile(name, data, 0o644); err != nil {
		d.t.Fatal(err)
	}
	return name
}

// pushArgs is the command line of a push of local, slowed down so that a
// kill lands in the middle, retrying a lost server for long enough to
// outlive a restart.
func (d *crashDriver) pushArgs(local string) []string {
	return append(append([]string{"push", "--json", "--bwlimit", "2M", "--retry-for", "60s",
		"--chunker", "fixed", "--avg", "64K"}, d.conn...), local, crashPath)
}

// runningPush is a push process under way.
type runningPush struct {
	// sum is the BLAKE3 of the version it pushes.
	sum    [32]byte
	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   <-chan error
	// ended is set once the process's result, err, has been received.
	ended bool
	err   error
}

// waitFor waits up to max for the push to end and reports whether it has.
func (p *runningPush) waitFor(max time.Duration) bool {
	if !p.ended {
		select {
		case p.err = <-p.done:
			p.ended = true
		case <-time.After(max):
		}
	}
	return p.ended
}

// waitOr waits for the push to end or for exited, the end of another
// process, to deliver, and reports whether the push ended.
func (p *runningPush) waitOr(exited <-chan error) bool {
	if p.ended {
		return true
	}
	select {
	case p.err = <-p.done:
		p.ended = true
	case <-exited:
	}
	return p.ended
}

// wait waits for the push to end and returns its result.
func (p *runningPush) wait() error {
	if !p.ended {
		p.err, p.ended = <-p.done, true
	}
	return p.err
}

// pushNext pushes a new version while during, when set, does its damage,
// and returns what happened. The push must succeed: by itself, retrying
// the server while it is down, or when run once more.
func (d *crashDriver) pushNext(during func(p *runningPush) (outcome string)) string {
	d.t.Helper()
	local := d.nextVersion()
	sum := fileSum(d.t, local)
	d.setAllowed(append(d.currentSums(), sum)...)
	cmd := exec.Command(d.bin, d.pushArgs(local)...)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	p := &runningPush{sum: sum, cmd: cmd}
	cmd.Stderr = &p.stderr
	p.done = startProcess(d.t, cmd)
	outcome := "not killed"
	if during != nil {
		outcome = during(p)
	}
	err := p.wait()
	if err != nil {
		// Killed, or gave up on a server that died: the same push again.
		outcome += ", push run again"
		stdout.Reset()
		out, err := exec.Command(d.bin, d.pushArgs(local)...).Output()
		if err != nil {
			d.t.Fatalf("push after %s: %v\n%s", outcome, err, stderrOf(err))
		}
		stdout.Write(out)
	} else if during != nil {
		outcome += ", push completed"
	}
	var res struct{ Version int }
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		d.t.Fatalf("push --json: %v\n%s", err, stdout.String())
	}
	// One push, one version: a commit retried after a crash must not
	// record its version twice. A push run again is a new push, though:
	// when the killed one had committed, it makes a version more.
	switch {
	case res.Version == d.latest+1:
	case res.Version == d.latest+2 && strings.HasSuffix(outcome, "run again") && d.recordedSums()[d.latest+1] == sum:
		outcome += " (the first had committed)"
	default:
		d.t.Errorf("push after %s made version %d, want %d", outcome, res.Version, d.latest+1)
	}
	d.latest = res.Version
	d.versions = append(d.versions, local)
	d.sums = append(d.sums, sum)
	d.setAllowed(sum)
	return outcome
}

// recordedSums returns the BLAKE3 of every version of the test's path that
// the server records, by number.
func (d *crashDriver) recordedSums() map[int][32]byte {
	d.t.Helper()
	out, err := exec.Command(d.bin, append(append([]string{"versions", "--json"}, d.conn...), crashPath)...).Output()
	if err != nil {
		d.t.Fatalf("versions: %v\n%s", err, stderrOf(err))
	}
	var list []struct {
		Version int
		BLAKE3  string
	}
	if err := json.Unmarshal(out, &list); err != nil {
		d.t.Fatalf("versions --json: %v\n%s", err, out)
	}
	sums := make(map[int][32]byte, len(list))
	for _, v := range list {
		var sum [32]byte
		hex.Decode(sum[:], []byte(v.BLAKE3))
		sums[v.Version] = sum
	}
	return sums
}

// currentSums returns the digest of the last version pushed, if any.
func (d *crashDriver) currentSums() [][32]byte {
	if len(d.sums) == 0 {
		return nil
	}
	return [][32]byte{d.sums[len(d.sums)-1]}
}

func (d *crashDriver) setAllowed(sums ...[32]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.allowed = sums
}

func (d *crashDriver) allowedNow() [][32]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.allowed
}

// randomDelay returns a seeded random duration below max.
func (d *crashDriver) randomDelay(max time.Duration) time.Duration {
	return time.Duration(d.rng.Int64N(int64(max)))
}

// killClientPush kills a push at a random moment and runs it again.
func (d *crashDriver) killClientPush() string {
	return d.pushNext(func(p *runningPush) string {
		if p.waitFor(d.randomDelay(700 * time.Millisecond)) {
			return "push ended before its kill"
		}
		p.cmd.Process.Kill()
		return "push killed"
	})
}

// killServerWrite kills the server while it stores the chunks of a push,
// and restarts it; the push retries the server meanwhile. Half the kills
// are at index.CheckpointChunkHalfWritten, the first or second time the
// server passes it (every version after the first rewrites at least two
// chunks), with a chunk's file half written, which a random moment rarely
// hits; the others are at a random moment of the push, which lands
// between the named points (a chunk stored and not yet recorded, a
// missing request half answered). Before the restart, "chunksync verify"
// tells what the crash left behind.
func (d *crashDriver) killServerWrite() string {
	point := ""
	if d.rng.IntN(2) == 0 {
		point = fmt.Sprintf("%s:%d", index.CheckpointChunkHalfWritten, 1+d.rng.IntN(2))
		d.restartServer(envCrashAt + "=" + point)
	}
	return d.pushNext(func(p *runningPush) string {
		where := "at a random moment"
		if point == "" {
			if p.waitFor(d.randomDelay(700 * time.Millisecond)) {
				return "push ended before the server's kill"
			}
			d.srv.kill()
		} else {
			where = "at " + point
			if p.waitOr(d.srv.done) {
				return "push ended before the server passed " + point
			}
		}
		left := d.leftBehind()
		// The chunk half written is in a temporary file, never under
		// its name: the restart removes the file, and the final
		// verify reads every chunk.
		if point != "" && !strings.Contains(left, string(index.ProblemTempFile)) {
			d.t.Errorf("the server killed at %s left no temporary chunk file, only %s", point, left)
		}
		d.startServer()
		return "server killed " + where + ", left " + left + d.recovers(p)
	})
}

// recovers waits for a push whose server was killed and has just been
// restarted to end by itself, within recoveryBound, and fails the test
// otherwise (a push it kills, pushNext runs again). It returns what
// happened, for the outcome.
func (d *crashDriver) recovers(p *runningPush) string {
	d.t.Helper()
	restarted := time.Now()
	if !p.waitFor(recoveryBound) {
		d.t.Errorf("the push did not end within %v of the server's restart", recoveryBound)
		p.cmd.Process.Kill()
		return ", push killed"
	}
	d.recoveries = append(d.recoveries, time.Since(restarted))
	if p.err != nil {
		d.t.Errorf("the push failed after the server's restart: %v\n%s", p.err, p.stderr.String())
		return ", push failed"
	}
	return ""
}

// restartServer stops the server and starts it again with env added to
// its environment.
func (d *crashDriver) restartServer(env ...string) {
	d.t.Helper()
	if err := d.srv.stop(); err != nil {
		d.t.Fatalf("stop server: %v", err)
	}
	d.startServer(env...)
}

// killServerCommit makes the server kill itself at a seeded point of the
// push's commit, then restarts it. Half the time the push, waiting for the
// commit's reply, must notice the restart and commit again by itself; the
// other half it dies with the server and never comes back, and the
// restarted server must by itself serve the latest version its index
// records: the pushed one once the commit recorded it, the one before
// otherwise (the push is then run again, as a user would).
func (d *crashDriver) killServerCommit() string {
	points := []string{transport.CheckpointCommitAssembled, transport.CheckpointCommitRecorded, transport.CheckpointCommitRenamed}
	point := points[d.rng.IntN(len(points))]
	d.restartServer(envCrashAt + "=" + point)
	return d.pushNext(func(p *runningPush) string {
		if p.waitOr(d.srv.done) {
			d.t.Fatalf("push ended (%v) and the server did not crash at %s", p.err, point)
		}
		left := d.leftBehind()
		if d.rng.IntN(2) == 0 {
			d.startServer()
			return fmt.Sprintf("killed at %s, left %s", point, left) + d.recovers(p)
		}
		p.cmd.Process.Kill()
		p.wait()
		d.startServer()
		// The versions request is answered once the server has finished
		// the commits that the crash interrupted.
		sums := d.recordedSums()
		latest := slices.Max(slices.Collect(maps.Keys(sums)))
		want := d.sums[len(d.sums)-1]
		if point != transport.CheckpointCommitAssembled {
			want = p.sum
		}
		if sums[latest] != want {
			d.t.Errorf("after a kill at %s, the latest version recorded (%d) is not the one expected", point, latest)
		}
		if fileSum(d.t, d.served()) != sums[latest] {
			d.t.Errorf("after a kill at %s and a restart, the server's file is not the latest version its index records (%d)", point, latest)
		}
		return fmt.Sprintf("killed at %s, left %s, client killed", point, left)
	})
}

// killServerGC makes the server kill itself at a seeded point of a garbage
// collection and restarts it. The gc that asked for the collection, waiting
// for the reply, must notice the restart and ask the new server by itself.
func (d *crashDriver) killServerGC() string {
	points := []string{transport.CheckpointGCPruned, index.CheckpointGCUnrecorded}
	point := points[d.rng.IntN(len(points))]
	// Pushes first, so that the collection has a pruned version's chunks
	// to delete: the server keeps two versions.
	d.pushNext(nil)
	for len(d.versions) < 3 {
		d.pushNext(nil)
	}
	d.restartServer(envCrashAt + "=" + point)
	gc := exec.Command(d.bin, append([]string{"gc"}, d.conn...)...)
	var stderr bytes.Buffer
	gc.Stderr = &stderr
	done := startProcess(d.t, gc)
	select {
	case <-d.srv.done:
	case err := <-done:
		d.t.Fatalf("gc ended (%v) and the server did not crash at %s", err, point)
	}
	left := d.leftBehind()
	d.startServer()
	// gc, waiting for the reply, notices the restart by its heartbeats
	// and asks the new server.
	restarted := time.Now()
	select {
	case err := <-done:
		if err != nil {
			d.t.Fatalf("gc across the crash: %v\n%s", err, stderr.String())
		}
		d.recoveries = append(d.recoveries, time.Since(restarted))
	case <-time.After(recoveryBound):
		gc.Process.Kill()
		d.t.Fatalf("gc did not end within %v of the server's restart", recoveryBound)
	}
	return fmt.Sprintf("killed at %s, left %s", point, left)
}

// killClientPull pulls the latest version onto a local copy of the first
// one, kills the pull at a random moment and pulls again.
func (d *crashDriver) killClientPull() string {
	target := filepath.Join(d.dir, "pulled", "file.bin")
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		d.t.Fatal(err)
	}
	copyFile(d.t, d.versions[0], target)
	// Slowed down, like the pushes, so that the kill lands in the middle.
	args := append(append([]string{"pull", "--bwlimit", "2M"}, d.conn...), crashPath, target)
	pull := exec.Command(d.bin, args...)
	done := startProcess(d.t, pull)
	outcome := "pull ended before its kill"
	select {
	case err := <-done:
		if err != nil {
			d.t.Fatalf("pull: %v\n%s", err, stderrOf(err))
		}
	case <-time.After(d.randomDelay(300 * time.Millisecond)):
		pull.Process.Kill()
		<-done
		outcome = "pull killed"
		// The target is the old file or the new one, never a mix.
		if s := fileSum(d.t, target); s != d.sums[0] && s != d.sums[len(d.sums)-1] {
			d.t.Errorf("a killed pull left %s neither the old nor the new version", target)
		}
		if _, err := os.Stat(engine.PartialPath(target)); err == nil {
			outcome += " with a partial file"
		}
	}
	if out, err := exec.Command(d.bin, args...).CombinedOutput(); err != nil {
		d.t.Fatalf("pull after %s: %v\n%s", outcome, err, out)
	}
	if fileSum(d.t, target) != d.sums[len(d.sums)-1] {
		d.t.Errorf("pull after %s: %s is not the latest version", outcome, target)
	}
	if _, err := os.Stat(engine.PartialPath(target)); !errors.Is(err, os.ErrNotExist) {
		d.t.Errorf("pull after %s left its partial file: %v", outcome, err)
	}
	return outcome
}

// leftBehind runs "chunksync verify --quick" on the dead server's data and
// returns the kinds of problem the crash left, for the log.
func (d *crashDriver) leftBehind() string {
	d.t.Helper()
	out, _ := exec.Command(d.bin, "verify", "--quick", "--json", "--data", d.data).Output()
	var rep verifyReport
	if err := json.Unmarshal(out, &rep); err != nil {
		d.t.Fatalf("verify --json after a crash: %v\n%s", err, out)
	}
	kinds := map[string]int{}
	for _, p := range rep.Problems {
		kinds[p.Kind]++
	}
	if len(kinds) == 0 {
		return "nothing"
	}
	var parts []string
	for k, n := range kinds {
		parts = append(parts, fmt.Sprintf("%d %s", n, k))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

// check stops the server, verifies its data and the file it serves, and
// starts it again.
func (d *crashDriver) check() {
	d.t.Helper()
	if err := d.srv.stop(); err != nil {
		d.t.Errorf("serve did not stop cleanly: %v", err)
	}
	if got := fileSum(d.t, d.served()); got != d.sums[len(d.sums)-1] {
		d.t.Errorf("the server's file is not the last version pushed")
	}
	out, err := exec.Command(d.bin, "verify", "--data", d.data).Output()
	if err != nil {
		d.t.Errorf("verify after recovery: %v\n%s%s", err, out, stderrOf(err))
	}
	d.startServer()
}

// startReader reads the server's file until stop is called, or the test
// ends, and fails the test whenever it does not hold a version it may
// hold. stop returns the number of reads.
func (d *crashDriver) startReader() (stop func() int) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	reads := 0
	stop = sync.OnceValue(func() int {
		close(quit)
		wg.Wait()
		return reads
	})
	// Before the test's directories are removed, however it ends.
	d.t.Cleanup(func() { stop() })
	wg.Go(func() {
		tick := time.NewTicker(15 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
			}
			allowed := d.allowedNow()
			data, err := os.ReadFile(d.served())
			if err != nil {
				d.t.Errorf("reader: the server's file is unreadable: %v", err)
				return
			}
			reads++
			if sum := blake3.Sum256(data); !slices.Contains(allowed, sum) && !slices.Contains(d.allowedNow(), sum) {
				d.t.Errorf("reader: the server's file (%d bytes) is neither the last version nor the one being pushed", len(data))
				return
			}
		}
	})
	return stop
}

// fileSum returns the BLAKE3 of a file's content.
func fileSum(t *testing.T, name string) [32]byte {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := blake3.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// freeUDPAddr returns a loopback UDP address that was free a moment ago,
// for a server that restarts on the same address.
func freeUDPAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// A server that crashes and restarts on the same address resets the
// connections of its predecessor, so a push under way re-dials at its next
// packet rather than after its idle timeout (20 s).
func TestServerCrashMidPushResumesAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := buildChunksync(t)
	data, addr := filepath.Join(dir, "data"), freeUDPAddr(t)
	srv := startServe(t, bin, nil, "--data", data, "--listen", addr)
	token, err := transport.NewToken(data, "crash")
	if err != nil {
		t.Fatal(err)
	}
	conn := []string{"--server", addr, "--token", token, "--fingerprint", srv.fp}
	local := filepath.Join(dir, "f.bin")
	const size = 6 << 20
	writeRandomFile(t, local, size, 70)
	push := exec.Command(bin, append(append([]string{"push", "--bwlimit", "1M", "--chunker", "fixed", "--avg", "64K"}, conn...), local, "f.bin")...)
	done := startProcess(t, push)
	waitStored(t, bin, conn, done, 1<<20)
	srv.kill()
	srv = startServe(t, bin, nil, "--data", data, "--listen", addr)
	restarted := time.Now()
	if err := <-done; err != nil {
		t.Fatalf("push across the server's crash: %v", err)
	}
	// About 5 MiB were left to send at 1 MiB/s.
	took := time.Since(restarted)
	t.Logf("the push ended %.1f s after the restart", took.Seconds())
	if took > 15*time.Second {
		t.Errorf("the push took %.1f s after the restart: it waited for its idle timeout", took.Seconds())
	}
	sameFiles(t, local, filepath.Join(data, "files", "f.bin"))
	if err := srv.stop(); err != nil {
		t.Error(err)
	}
}
