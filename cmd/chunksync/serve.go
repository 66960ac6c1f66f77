package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
	"github.com/chunksync/chunksync/transport"
)

// serveOptions are the flags of the serve command.
type serveOptions struct {
	Data        string
	Files       string
	Listen      string
	FECListen   string
	SessionIdle time.Duration
	Keep        int
	GCEvery     time.Duration
	Debug       bool
	Limits      serveLimits
}

// serveLimits are the flags that bound what clients may hold of the
// server; docs/SECURITY.md says why each exists.
type serveLimits struct {
	MaxStreams          int
	Memory              byteSize
	ChunkCache          byteSize
	HandshakeTimeout    time.Duration
	IdleTimeout         time.Duration
	UnusedTimeout       time.Duration
	StallTimeout        time.Duration
	CommitWait          time.Duration
	MaxSessionsPerToken int
	MaxConnsPerToken    int
	MaxManifestChunks   int
}

// newServeCommand returns the serve command.
func newServeCommand() *cobra.Command {
	var opts serveOptions
	cmd := &cobra.Command{
		Use:   "serve --data DIR [flags]",
		Short: "Run a chunksync server",
		Long: `Serve runs a chunksync server on a UDP port (QUIC). The data directory holds
the server's identity, its tokens, the index and the chunk store; the files
directory holds the latest verified version of every pushed file.

On start, serve prints two lines on stdout:

  listening on ADDR
  fingerprint FINGERPRINT

Clients pin the fingerprint with --fingerprint (or trust it on first use).

Clients on links that lose packets move their chunk data to a second UDP
port, where it travels with forward error correction (FEC). By default that
is the port after --listen's (4434 for 4433; open both in a firewall), or,
when it is taken, none: clients then stay on the first. --fec-listen picks
another address, and off serves none.
Logs go to stderr. SIGINT or SIGTERM stops the server cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), opts, streamsOf(cmd))
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Data, "data", "", "data directory (created if missing)")
	f.StringVar(&opts.Files, "files", "", "directory of the materialised files (default DATA/files)")
	f.StringVar(&opts.Listen, "listen", defaultServer, "UDP address to listen on; port 0 picks a free one")
	f.StringVar(&opts.FECListen, "fec-listen", "", "UDP address of the FEC port for clients on lossy links (default: the port after --listen's, on the same host); off for none")
	f.DurationVar(&opts.SessionIdle, "session-idle", 24*time.Hour, "drop upload sessions untouched for this long")
	f.IntVar(&opts.Keep, "keep", 10, "versions of each file to keep; a push prunes older ones")
	f.DurationVar(&opts.GCEvery, "gc-every", time.Hour, "how often to prune versions and delete chunks that nothing refers to ('chunksync gc' runs it at once)")
	f.BoolVar(&opts.Debug, "debug", false, "log at debug level")
	l := &opts.Limits
	l.Memory, l.ChunkCache = 256<<20, 64<<20
	f.IntVar(&l.MaxStreams, "max-streams", 64, "concurrent streams of one connection")
	f.Var(&l.Memory, "memory", "bytes all streams together may hold for chunks and requests in flight")
	f.Var(&l.ChunkCache, "chunk-cache", "bytes of chunks just received kept to read again without decompressing (0: none)")
	f.DurationVar(&l.HandshakeTimeout, "handshake-timeout", 10*time.Second, "close a connection that has not said hello within this")
	f.DurationVar(&l.IdleTimeout, "idle-timeout", 30*time.Second, "close a connection that sends no packet for this long")
	f.DurationVar(&l.UnusedTimeout, "unused-timeout", 10*time.Minute, "close a connection that has no open stream for this long, keep-alives or not")
	f.DurationVar(&l.StallTimeout, "stall-timeout", 30*time.Second, "refuse a stream that sends or reads nothing for this long in the middle of a request, chunk or reply")
	f.DurationVar(&l.CommitWait, "commit-wait", 5*time.Second, "how long a commit waits for the next of its chunks still on their way")
	f.IntVar(&l.MaxSessionsPerToken, "max-sessions-per-token", 128, "open upload sessions of one token")
	f.IntVar(&l.MaxConnsPerToken, "max-conns-per-token", 256, "open connections of one token")
	f.IntVar(&l.MaxManifestChunks, "max-manifest-chunks", engine.MaxManifestChunks, fmt.Sprintf("chunks of one file (at most %d)", engine.MaxManifestChunks))
	cmd.MarkFlagRequired("data")
	return cmd
}

// runServe serves until ctx is cancelled.
func runServe(ctx context.Context, opts serveOptions, st ioStreams) error {
	if opts.Keep < 1 {
		return usagef("--keep %d: keep at least 1 version", opts.Keep)
	}
	if opts.GCEvery <= 0 {
		return usagef("--gc-every %v: need a positive interval", opts.GCEvery)
	}
	if err := opts.Limits.check(); err != nil {
		return err
	}
	chunkCache := int64(opts.Limits.ChunkCache)
	if chunkCache == 0 {
		chunkCache = -1 // none; the library reads 0 as its default
	}
	level := slog.LevelInfo
	if opts.Debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(st.Err, &slog.HandlerOptions{Level: level}))
	checkpoint, err := crashAt(os.Getenv(envCrashAt), log)
	if err != nil {
		return usagef("%s: %v", envCrashAt, err)
	}
	srv, err := transport.NewServer(transport.ServerConfig{
		DataDir:      opts.Data,
		FilesDir:     opts.Files,
		Listen:       opts.Listen,
		FECListen:    opts.FECListen,
		SessionIdle:  opts.SessionIdle,
		Logger:       log,
		KeepVersions: opts.Keep,
		CollectEvery: opts.GCEvery,

		MaxStreams:          opts.Limits.MaxStreams,
		MemoryBudget:        int64(opts.Limits.Memory),
		ChunkCache:          chunkCache,
		HandshakeTimeout:    opts.Limits.HandshakeTimeout,
		IdleTimeout:         opts.Limits.IdleTimeout,
		UnusedTimeout:       opts.Limits.UnusedTimeout,
		StallTimeout:        opts.Limits.StallTimeout,
		CommitWait:          opts.Limits.CommitWait,
		MaxSessionsPerToken: opts.Limits.MaxSessionsPerToken,
		MaxConnsPerToken:    opts.Limits.MaxConnsPerToken,
		MaxManifestChunks:   opts.Limits.MaxManifestChunks,
		Checkpoint:          checkpoint,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	setMemoryLimit(srv.MemoryLimit())
	fmt.Fprintf(st.Out, "listening on %s\nfingerprint %s\n", srv.Addr(), srv.Fingerprint())
	fec := "off"
	if a := srv.FECAddr(); a != nil {
		fec = a.String()
	}
	log.Info("serving", "addr", srv.Addr().String(), "fec", fec, "fingerprint", srv.Fingerprint(), "data", opts.Data)
	err = srv.Serve(ctx)
	log.Info("stopped")
	return err
}

// minMemory is the least --memory: a control request of 64 MiB reserves
// twice its size, and a request above the budget is refused outright.
const minMemory = 128 << 20

// check refuses limits the server cannot work with. Zero is refused too:
// the library would read it as its default, not as the zero it says.
func (l serveLimits) check() error {
	switch {
	case l.MaxStreams < 3:
		return usagef("--max-streams %d: a client needs at least 3 (hello, control, data)", l.MaxStreams)
	case l.Memory < minMemory:
		return usagef("--memory %d: need at least %d bytes", l.Memory, minMemory)
	case l.ChunkCache < 0:
		return usagef("--chunk-cache %d: need 0 or more bytes", l.ChunkCache)
	case l.HandshakeTimeout <= 0, l.IdleTimeout <= 0, l.UnusedTimeout <= 0, l.StallTimeout <= 0, l.CommitWait <= 0:
		return usagef("--handshake-timeout, --idle-timeout, --unused-timeout, --stall-timeout and --commit-wait need positive durations")
	case l.MaxSessionsPerToken < 1, l.MaxConnsPerToken < 1:
		return usagef("--max-sessions-per-token and --max-conns-per-token need at least 1")
	case l.MaxManifestChunks < 1 || l.MaxManifestChunks > engine.MaxManifestChunks:
		return usagef("--max-manifest-chunks %d: need 1 to %d", l.MaxManifestChunks, engine.MaxManifestChunks)
	}
	return nil
}

// envCrashAt names the variable that makes serve kill itself, for crash
// tests: "POINT" or "POINT:N" sends SIGKILL to the server the Nth time (1
// by default) it passes POINT, one of the transport.Checkpoint*,
// index.CheckpointChunkHalfWritten and index.CheckpointGCUnrecorded names.
// Unset, it costs nothing.
const envCrashAt = "CHUNKSYNC_CRASH_AT"

// crashAt returns the ServerConfig.Checkpoint that spec asks for, or nil
// for an empty spec.
func crashAt(spec string, log *slog.Logger) (func(string), error) {
	if spec == "" {
		return nil, nil
	}
	point, count, found := strings.Cut(spec, ":")
	n := 1
	if found {
		var err error
		if n, err = strconv.Atoi(count); err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want POINT or POINT:N with N at least 1", spec)
		}
	}
	known := []string{index.CheckpointChunkHalfWritten, transport.CheckpointCommitAssembled, transport.CheckpointCommitRenamed,
		transport.CheckpointCommitRecorded, transport.CheckpointGCPruned, index.CheckpointGCUnrecorded}
	if !slices.Contains(known, point) {
		return nil, fmt.Errorf("unknown point %q; known: %s", point, strings.Join(known, ", "))
	}
	var passed atomic.Int64
	return func(p string) {
		if p == point && passed.Add(1) == int64(n) {
			log.Warn("crashing on purpose", "point", p, "passed", n)
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // nothing after the point may run
		}
	}, nil
}
