//go:build linux

package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// TCPCongestionControls returns the congestion control algorithms the
// kernel has loaded (net.ipv4.tcp_available_congestion_control). Root may
// use any of them on a socket or a route, whatever the host allows others.
func TCPCongestionControls() ([]string, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control")
	if err != nil {
		return nil, fmt.Errorf("congestion controls: %w", err)
	}
	return strings.Fields(string(b)), nil
}

// CheckTCPTool reports why RunTCPTransfer cannot run tool on this machine:
// it is not one of TCPTools, the kernel lacks its congestion control, or
// it needs rsync and rsync is not installed. It does not try the link
// itself: CheckTUNLink does.
func CheckTCPTool(tool string) error {
	t, ok := tcpTools[tool]
	if !ok {
		return fmt.Errorf("tcp tool %q: want one of %s", tool, strings.Join(TCPTools, ", "))
	}
	have, err := TCPCongestionControls()
	if err != nil {
		return fmt.Errorf("tcp tool %s: %w", tool, err)
	}
	if !slices.Contains(have, t.congestion) {
		return fmt.Errorf("tcp tool %s: the kernel has no congestion control %s (net.ipv4.tcp_available_congestion_control: %s)",
			tool, t.congestion, strings.Join(have, " "))
	}
	if t.rsync {
		if _, err := exec.LookPath("rsync"); err != nil {
			return fmt.Errorf("tcp tool %s: %w", tool, err)
		}
	}
	return nil
}

// CheckTUNLink reports why a TUNLink cannot be made here (no root, no
// /dev/net/tun), by making one and removing it again.
func CheckTUNLink(ctx context.Context) error {
	l, err := NewTUNLink(ctx, LinkConfig{})
	if err != nil {
		return err
	}
	return l.Close()
}

// RunTCPTransfer runs spec: it creates a TUNLink with the profile, sends
// the file with the tool from a client in namespace A to a server in B
// and, with Pull, back from B to A. work must exist; rsync's module and
// pulled copy go to a new directory in it. It returns one result per
// direction; an error only when the run could not be set up (see
// CheckTCPTool and CheckTUNLink). A transfer that fails, times out or
// that ctx ends is a result with Complete false; one is Complete only when
// what arrived was compared with the file and found equal.
//
// The results' wire bytes are the TCP stream's, each way, as the kernel
// counted them (TCP_INFO): retransmissions and headers are not in them.
// DatagramsLost counts the IP packets the link dropped, both ways. CPU
// time is that of the rsync processes for rsync; for tcp, whose two ends
// run in this process, that of the process, the link's forwarding
// included.
func RunTCPTransfer(ctx context.Context, work string, spec TCPTransferSpec) ([]TransferResult, error) {
	if err := CheckTCPTool(spec.Tool); err != nil {
		return nil, fmt.Errorf("tcp transfer: %w", err)
	}
	t := tcpTools[spec.Tool]
	fi, err := os.Stat(spec.File)
	if err != nil {
		return nil, fmt.Errorf("tcp transfer: %w", err)
	}
	want, err := fileDigest(spec.File)
	if err != nil {
		return nil, fmt.Errorf("tcp transfer: %w", err)
	}
	cfg, err := spec.Profile.Link(spec.Seed)
	if err != nil {
		return nil, fmt.Errorf("tcp transfer: %w", err)
	}
	var linkOpts []TUNLinkOption
	if t.rsync {
		// rsync opens its own sockets: the route chooses for it.
		linkOpts = append(linkOpts, WithCongestionControl(t.congestion))
	}
	link, err := NewTUNLink(ctx, cfg, linkOpts...)
	if err != nil {
		return nil, fmt.Errorf("tcp transfer: %w", err)
	}
	defer link.Close()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	served := make(chan error, 1)
	go func() {
		err := link.Serve(ctx)
		if err != nil {
			// Nothing crosses a link that stopped forwarding: end the
			// transfers now rather than at their deadline.
			cancel(err)
		}
		served <- err
	}()
	defer func() { cancel(nil); <-served }()

	env := tcpTransferEnv{link: link, tool: t, file: spec.File, size: fi.Size(), want: want, timeout: spec.Timeout}
	if t.rsync {
		dir, err := os.MkdirTemp(work, "rsync-")
		if err != nil {
			return nil, fmt.Errorf("tcp transfer: %w", err)
		}
		defer os.RemoveAll(dir)
		if env.rsync, err = NewRsyncServer(dir); err != nil {
			return nil, fmt.Errorf("tcp transfer: %w", err)
		}
		env.pulled = filepath.Join(dir, "pulled")
	}
	base := spec.Profile.result(spec.Tool, fi.Size())
	results := []TransferResult{env.measure(ctx, base, "push")}
	if spec.Pull && results[0].Complete {
		results = append(results, env.measure(ctx, base, "pull"))
	}
	return results, nil
}

// tcpTransferEnv is what the transfers of one RunTCPTransfer share.
type tcpTransferEnv struct {
	link *TUNLink
	tool tcpTool
	file string
	size int64
	want [sha256.Size]byte
	// timeout bounds each transfer; 0 is no bound.
	timeout time.Duration
	// rsync is the daemon's module and pulled the file a pull writes,
	// for rsync.
	rsync  *RsyncServer
	pulled string
}

// tcpRun is what one transfer measured.
type tcpRun struct {
	// moved is the bytes of the file that arrived; up and down are the
	// stream's bytes from client to server and back.
	moved    int64
	up, down uint64
	wall     time.Duration
}

// measure runs one transfer, "push" or "pull", and fills in a copy of
// base.
func (e *tcpTransferEnv) measure(ctx context.Context, base TransferResult, direction string) TransferResult {
	if e.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.timeout)
		defer cancel()
	}
	r := base
	r.Direction = direction
	lost := e.lost()
	cpu := processCPU
	if e.tool.rsync {
		cpu = childrenCPU
	}
	before := cpu()
	var run tcpRun
	var err error
	if e.tool.rsync {
		run, err = e.runRsync(ctx, direction == "pull")
	} else {
		run, err = e.runStream(ctx, direction == "pull")
	}
	r.CPUSeconds = (cpu() - before).Seconds()
	r.Seconds = run.wall.Seconds()
	r.Moved = run.moved
	r.WireBytesSent, r.WireBytesReceived = run.up, run.down
	r.DatagramsLost = e.lost() - lost
	r.Complete = err == nil
	if err != nil {
		// The error of a transfer cut short is a read or a process
		// killed; say what cut it.
		switch cause := context.Cause(ctx); {
		case e.timeout > 0 && errors.Is(cause, context.DeadlineExceeded):
			err = fmt.Errorf("timed out after %v", e.timeout)
		case cause != nil:
			err = fmt.Errorf("%w (%v)", err, cause)
		}
		r.Error = err.Error()
	}
	r.GoodputMbit = goodput(r.Moved, r.Seconds)
	return r
}

// lost is what the link dropped so far, both ways.
func (e *tcpTransferEnv) lost() uint64 {
	up, down := e.link.Stats()
	return up.DroppedLoss + up.DroppedQueue + down.DroppedLoss + down.DroppedQueue
}

// noKeepAlive turns off the keepalive Go turns on for its connections,
// probes after 15 s without a packet and a reset 9 probes later: a sender
// backing off from a run of lost retransmissions is silent for longer
// than that on a lossy link, and TCP tools, rsync among them, keep the
// kernel's default, which gives up after 15 retransmissions instead.
const noKeepAlive = -1

// listen opens a TCP listener on an ephemeral port of B's address.
func (e *tcpTransferEnv) listen(ctx context.Context) (*net.TCPListener, error) {
	var ln net.Listener
	addr := netip.AddrPortFrom(e.link.Addr(SideB), 0).String()
	err := e.link.Do(SideB, func() error {
		var err error
		ln, err = (&net.ListenConfig{KeepAlive: noKeepAlive}).Listen(ctx, "tcp4", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln.(*net.TCPListener), nil
}

// runStream connects A to B with one TCP connection and sends the file's
// bytes from A (or from B when pull), then closes; the other end reads to
// the end and compares what arrived with the file. The time runs from the
// connection's first packet to that comparison.
func (e *tcpTransferEnv) runStream(ctx context.Context, pull bool) (run tcpRun, err error) {
	ln, err := e.listen(ctx)
	if err != nil {
		return run, err
	}
	defer ln.Close()
	start := time.Now()
	accepted := make(chan *net.TCPConn, 1)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		c, err := acceptCtx(gctx, ln)
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		accepted <- c
		return nil
	})
	var client *net.TCPConn
	g.Go(func() error {
		return e.link.Do(SideA, func() error {
			c, err := (&net.Dialer{KeepAlive: noKeepAlive}).DialContext(gctx, "tcp4", ln.Addr().String())
			if err != nil {
				return fmt.Errorf("connect to %s: %w", ln.Addr(), err)
			}
			client = c.(*net.TCPConn)
			return nil
		})
	})
	err = g.Wait()
	var server *net.TCPConn
	select {
	case server = <-accepted:
	default:
	}
	for _, c := range []*net.TCPConn{client, server} {
		if c != nil {
			defer c.Close()
		}
	}
	if err != nil {
		return run, err
	}
	for _, c := range []*net.TCPConn{client, server} {
		if err := setCongestion(c, e.tool.congestion); err != nil {
			return run, err
		}
	}
	sender, receiver := client, server
	if pull {
		sender, receiver = server, client
	}
	// A transfer that ctx ends, or whose other end fails, unblocks at
	// once: a sender whose connection timed out sends no reset, and the
	// receiver would wait for ever.
	g, gctx = errgroup.WithContext(ctx)
	stop := context.AfterFunc(gctx, func() {
		client.SetDeadline(time.Unix(1, 0))
		server.SetDeadline(time.Unix(1, 0))
	})
	defer stop()
	g.Go(func() error {
		f, err := os.Open(e.file)
		if err != nil {
			return err
		}
		defer f.Close()
		// io.Copy from a file to a TCP connection is sendfile(2): the
		// sender costs the process no copies.
		if _, err := io.Copy(sender, f); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		if err := sender.CloseWrite(); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		h := sha256.New()
		n, err := io.Copy(h, receiver)
		// What arrived before an error still counts, for the goodput
		// of a transfer that did not finish.
		run.moved = n
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		if n != e.size || !bytes.Equal(h.Sum(nil), e.want[:]) {
			run.moved = 0
			return fmt.Errorf("received %d bytes that differ from the file's %d", n, e.size)
		}
		return nil
	})
	err = g.Wait()
	run.wall = time.Since(start)
	if err != nil {
		return run, err
	}
	// The receiver has read to the sender's end: what each socket
	// received is the whole stream from the other, and the receiver's
	// count has the FIN that ended it, a sequence number but no byte.
	up, err := tcpInfo(server)
	if err != nil {
		return run, err
	}
	down, err := tcpInfo(client)
	if err != nil {
		return run, err
	}
	run.up, run.down = up.Bytes_received, down.Bytes_received
	if pull {
		run.down--
	} else {
		run.up--
	}
	return run, nil
}

// runRsync pushes the file with rsync from A to the daemon's module in B,
// or pulls it back when pull, and compares the copy with the file. The
// daemon runs as inetd would start it, on the connection that a listener
// of this process accepted in B, so that there is no daemon start to wait
// for and the process holds the server's socket, whose TCP_INFO counts the
// stream. The time is the client's, from its start to its exit.
//
// rsync keeps what a transfer cut short has received out of sight, under
// a temporary name it removes: such a run's moved is the stream's bytes
// towards the receiver, at most the file's size. For a file that does not
// compress they are the file's bytes and rsync's framing, a fraction of a
// percent more; for one that does they are fewer.
func (e *tcpTransferEnv) runRsync(ctx context.Context, pull bool) (tcpRun, error) {
	var run tcpRun
	ln, err := e.listen(ctx)
	if err != nil {
		return run, err
	}
	defer ln.Close()
	name := filepath.Base(e.file)
	url := fmt.Sprintf("rsync://%s/bench/", ln.Addr())
	args := append([]string{}, RsyncArgs...)
	copyPath := filepath.Join(e.rsync.Dir(), name)
	if pull {
		args = append(args, url+name, e.pulled)
		copyPath = e.pulled
	} else {
		args = append(args, e.file, url+name)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		c, err := acceptCtx(gctx, ln)
		if err != nil {
			return fmt.Errorf("rsync: accept the client: %w", err)
		}
		// Closing the connection tells a client whose daemon failed to
		// stop waiting for it.
		defer c.Close()
		up, down, err := e.serveRsync(gctx, c)
		run.up, run.down = up, down
		return err
	})
	var out bytes.Buffer
	client := exec.CommandContext(gctx, "rsync", args...)
	client.Stdout, client.Stderr = &out, &out
	client.SysProcAttr = childOfThisProcess()
	start := time.Now()
	runErr := e.link.Do(SideA, client.Start)
	if runErr == nil {
		runErr = client.Wait()
	}
	run.wall = time.Since(start)
	if runErr != nil {
		// The server may wait for a client that never connected.
		cancel()
	}
	serveErr := g.Wait()
	if runErr == nil && serveErr == nil {
		err = e.check(copyPath)
	} else if runErr != nil {
		err = fmt.Errorf("rsync %s: %w: %s", strings.Join(args, " "), runErr, bytes.TrimSpace(out.Bytes()))
	} else {
		err = serveErr
	}
	if err != nil {
		toReceiver := run.up
		if pull {
			toReceiver = run.down
		}
		run.moved = min(e.size, int64(toReceiver))
		return run, err
	}
	run.moved = e.size
	return run, nil
}

// check compares the copy at path with the file.
func (e *tcpTransferEnv) check(path string) error {
	got, err := fileDigest(path)
	if err != nil {
		return fmt.Errorf("rsync: %w", err)
	}
	if got != e.want {
		return fmt.Errorf("rsync: %s differs from %s", path, e.file)
	}
	return nil
}

// serveRsync runs an rsync daemon in B on the accepted connection c and,
// once it has exited and the client has closed its end, returns what the
// stream carried each way. It returns the counts so far also when the
// daemon fails or ctx ends it.
func (e *tcpTransferEnv) serveRsync(ctx context.Context, c *net.TCPConn) (up, down uint64, err error) {
	if got, err := congestion(c); err != nil || got != e.tool.congestion {
		return 0, 0, fmt.Errorf("rsync: the daemon's connection uses congestion control %q (%v), want %q", got, err, e.tool.congestion)
	}
	err = e.runDaemon(ctx, c)
	fin := false
	if err == nil {
		// The daemon's exit does not close the connection, which this
		// process still holds: read to the client's close, after which
		// every byte it sent has arrived and the last of the daemon's is
		// acknowledged. An error (a reset, from a client that exits with
		// bytes unread) ends the wait as well.
		stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
		_, closeErr := io.Copy(io.Discard, c)
		stop()
		fin = closeErr == nil
	}
	info, ierr := tcpInfo(c)
	if ierr != nil {
		return 0, 0, errors.Join(err, ierr)
	}
	up, down = info.Bytes_received, info.Bytes_acked
	if fin {
		// The count has the client's FIN, a sequence number but no byte.
		up--
	}
	return up, down, err
}

// runDaemon runs `rsync --daemon` in B on connection c until it exits.
func (e *tcpTransferEnv) runDaemon(ctx context.Context, c *net.TCPConn) error {
	f, err := c.File()
	if err != nil {
		return fmt.Errorf("rsync: daemon connection: %w", err)
	}
	var stderr bytes.Buffer
	daemon := exec.CommandContext(ctx, "rsync", "--daemon", "--config", e.rsync.config)
	daemon.Stdin, daemon.Stdout, daemon.Stderr = f, f, &stderr
	daemon.SysProcAttr = childOfThisProcess()
	err = e.link.Do(SideB, daemon.Start)
	f.Close()
	if err != nil {
		return fmt.Errorf("rsync: start daemon: %w", err)
	}
	if err := daemon.Wait(); err != nil {
		return fmt.Errorf("rsync daemon: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// childOfThisProcess makes a child that dies with this process and takes
// its own children with it: it is killed when this process ends, and as
// the first process of a new PID namespace its death kills every process
// in that namespace, the ones rsync forks included. An interrupted
// benchmark leaves no rsync behind, nor the network namespace it would
// keep alive.
func childOfThisProcess() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Cloneflags: syscall.CLONE_NEWPID}
}

// setCongestion makes connection c use congestion control algorithm name
// (TCP_CONGESTION) and checks that it does.
func setCongestion(c *net.TCPConn, name string) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("congestion control %s: %w", name, err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, name)
	}); err != nil {
		serr = err
	}
	if serr != nil {
		return fmt.Errorf("congestion control %s: %w", name, serr)
	}
	if got, err := congestion(c); err != nil || got != name {
		return fmt.Errorf("congestion control %s: the socket uses %q (%v)", name, got, err)
	}
	return nil
}

// congestion returns the congestion control algorithm connection c uses.
func congestion(c *net.TCPConn) (string, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	var name string
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		name, gerr = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	}); err != nil {
		return "", err
	}
	// The kernel pads the name with NULs to its longest.
	return strings.TrimRight(name, "\x00"), gerr
}

// tcpInfo returns the kernel's TCP_INFO of connection c.
func tcpInfo(c *net.TCPConn) (*unix.TCPInfo, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tcp info: %w", err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		ierr = err
	}
	if ierr != nil {
		return nil, fmt.Errorf("tcp info: %w", ierr)
	}
	return info, nil
}

// fileDigest is the SHA-256 of the file at path.
func fileDigest(path string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(path)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, fmt.Errorf("digest %s: %w", path, err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
