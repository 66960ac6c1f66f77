package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// RsyncArgs are the options of every rsync client run: compression (rsync
// 3.2 and later negotiate zstd, else zlib), the delta algorithm even on
// loopback, and no quick check, so that a file whose size and time match is
// still compared block by block. The file list is one file and the same
// for push and pull, so the rest of rsync's options move no bytes.
var RsyncArgs = []string{"-z", "--no-whole-file", "--ignore-times", "--stats", "--debug=nstr"}

// RsyncTransfer is what one rsync client run moved.
type RsyncTransfer struct {
	// Up and Down are the bytes on the TCP connection from client to
	// daemon and back, everything included: greeting, module and
	// option exchange, file list, checksums and data.
	Up, Down int64
	// Wall is the client's run time from start to exit.
	Wall time.Duration
	// Literal and Matched are the bytes rsync sent as data and the bytes
	// it found in the old copy, from its --stats.
	Literal, Matched int64
	// Compress is the compression rsync negotiated, for example
	// "zstd (level 3)"; empty when rsync does not say.
	Compress string
	// Output is what the client printed.
	Output string
}

// Total is the bytes of both directions.
func (t RsyncTransfer) Total() int64 { return t.Up + t.Down }

// RsyncServer is an rsync daemon module on loopback, named "bench", that
// serves and receives the files of a directory.
//
// Each transfer starts the daemon for its one connection, as inetd would:
// `rsync --daemon --config C` with the daemon's end of a loopback TCP
// connection as its standard input and output. The daemon runs the same code
// as a listening one after its accept, so the bytes on the wire are the
// same, but there is no port to pick, no start to wait for, and no process
// left behind. Between client and daemon the server relays the bytes and
// counts them.
type RsyncServer struct {
	dir, config string
}

// NewRsyncServer prepares a module in work, which must exist: the module's
// files go to work/files (see Dir), the daemon's configuration and log sit
// beside it. It needs rsync on PATH.
func NewRsyncServer(work string) (*RsyncServer, error) {
	if _, err := exec.LookPath("rsync"); err != nil {
		return nil, fmt.Errorf("rsync server: %w", err)
	}
	s := &RsyncServer{dir: filepath.Join(work, "files"), config: filepath.Join(work, "rsyncd.conf")}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, fmt.Errorf("rsync server: %w", err)
	}
	// A daemon started by root runs as nobody unless told otherwise, and
	// nobody may not write the module's directory.
	conf := fmt.Sprintf("use chroot = no\nuid = %d\ngid = %d\nlog file = %s\n\n[bench]\npath = %s\nread only = no\n",
		os.Getuid(), os.Getgid(), filepath.Join(work, "rsyncd.log"), s.dir)
	if err := os.WriteFile(s.config, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("rsync server: %w", err)
	}
	return s, nil
}

// Dir is the module's directory: a file put there as name is what Push
// updates and Pull reads.
func (s *RsyncServer) Dir() string { return s.dir }

// Push runs `rsync RsyncArgs local rsync://…/bench/name`, which updates the
// module's file name (if it exists) to local's content.
func (s *RsyncServer) Push(ctx context.Context, local, name string) (RsyncTransfer, error) {
	return s.run(ctx, func(url string) []string { return []string{local, url + name} })
}

// Pull runs `rsync RsyncArgs rsync://…/bench/name local`, which updates local
// (if it exists) to the module's file name.
func (s *RsyncServer) Pull(ctx context.Context, name, local string) (RsyncTransfer, error) {
	return s.run(ctx, func(url string) []string { return []string{url + name, local} })
}

func (s *RsyncServer) run(ctx context.Context, paths func(url string) []string) (RsyncTransfer, error) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return RsyncTransfer{}, fmt.Errorf("rsync: %w", err)
	}
	defer ln.Close()
	url := fmt.Sprintf("rsync://%s/bench/", ln.Addr())
	args := append(append([]string{}, RsyncArgs...), paths(url)...)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	var up, down atomic.Int64
	g.Go(func() error {
		client, err := acceptCtx(gctx, ln)
		if err != nil {
			return fmt.Errorf("rsync: accept the client: %w", err)
		}
		defer client.Close()
		return s.serve(gctx, client, &up, &down)
	})
	var out bytes.Buffer
	start := time.Now()
	cmd := exec.CommandContext(gctx, "rsync", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	wall := time.Since(start)
	if runErr != nil {
		// The relay may wait for a client that never connected.
		cancel()
	}
	serveErr := g.Wait()
	if runErr != nil {
		return RsyncTransfer{}, fmt.Errorf("rsync %s: %w: %s", strings.Join(args, " "), runErr, bytes.TrimSpace(out.Bytes()))
	}
	if serveErr != nil {
		return RsyncTransfer{}, serveErr
	}
	t := RsyncTransfer{Up: up.Load(), Down: down.Load(), Wall: wall, Output: out.String()}
	t.Literal = statsNumber(t.Output, "Literal data")
	t.Matched = statsNumber(t.Output, "Matched data")
	if m := negotiatedCompress.FindStringSubmatch(t.Output); m != nil {
		t.Compress = m[1]
	}
	return t, nil
}

// serve starts a daemon for the client's connection and relays between
// them until both directions have ended and the daemon has exited.
func (s *RsyncServer) serve(ctx context.Context, client *net.TCPConn, up, down *atomic.Int64) error {
	near, far, err := tcpPair()
	if err != nil {
		return fmt.Errorf("rsync: daemon connection: %w", err)
	}
	defer near.Close()
	farFile, err := far.File()
	far.Close()
	if err != nil {
		return fmt.Errorf("rsync: daemon connection: %w", err)
	}
	var stderr bytes.Buffer
	daemon := exec.CommandContext(ctx, "rsync", "--daemon", "--config", s.config)
	daemon.Stdin, daemon.Stdout, daemon.Stderr = farFile, farFile, &stderr
	err = daemon.Start()
	farFile.Close()
	if err != nil {
		return fmt.Errorf("rsync: start daemon: %w", err)
	}
	// A relay that fails (the daemon resets a connection it is done
	// with, for one) closes both ends, so that neither side waits for
	// bytes that will not come; the exit status of client and daemon says
	// whether the transfer worked.
	var g errgroup.Group
	g.Go(func() error { relay(near, client, up); return nil })
	g.Go(func() error { relay(client, near, down); return nil })
	g.Wait()
	if err := daemon.Wait(); err != nil {
		return fmt.Errorf("rsync daemon: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// relay copies src to dst, counting, and passes the end of src on: a
// half-close as a half-close, anything else as a close of both.
func relay(dst, src *net.TCPConn, n *atomic.Int64) {
	buf := make([]byte, 64<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			n.Add(int64(k))
			if _, werr := dst.Write(buf[:k]); werr != nil {
				err = werr
			}
		}
		if errors.Is(err, io.EOF) {
			dst.CloseWrite()
			return
		}
		if err != nil {
			src.Close()
			dst.Close()
			return
		}
	}
}

// tcpPair returns the two ends of a new loopback TCP connection.
func tcpPair() (near, far *net.TCPConn, err error) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	near, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		return nil, nil, err
	}
	if far, err = ln.AcceptTCP(); err != nil {
		near.Close()
		return nil, nil, err
	}
	return near, far, nil
}

// acceptCtx accepts one connection on ln unless ctx ends first.
func acceptCtx(ctx context.Context, ln *net.TCPListener) (*net.TCPConn, error) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	c, err := ln.AcceptTCP()
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return c, err
}

var negotiatedCompress = regexp.MustCompile(`negotiated compress: (.+)`)

// statsNumber reads a "Name: 1,234 bytes" line of rsync's --stats; -1 when
// there is none.
func statsNumber(out, name string) int64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `: ([0-9,]+)`).FindStringSubmatch(out)
	if m == nil {
		return -1
	}
	n, err := strconv.ParseInt(strings.ReplaceAll(m[1], ",", ""), 10, 64)
	if err != nil {
		return -1
	}
	return n
}
