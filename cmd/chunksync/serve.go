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

	"github.com/chunksync/chunksync/index"
	"github.com/chunksync/chunksync/transport"
)

// serveOptions are the flags of the serve command.
type serveOptions struct {
	Data        string
	Files       string
	Listen      string
	SessionIdle time.Duration
	Keep        int
	GCEvery     time.Duration
	Debug       bool
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
	f.DurationVar(&opts.SessionIdle, "session-idle", 24*time.Hour, "drop upload sessions untouched for this long")
	f.IntVar(&opts.Keep, "keep", 10, "versions of each file to keep; a push prunes older ones")
	f.DurationVar(&opts.GCEvery, "gc-every", time.Hour, "how often to prune versions and delete chunks that nothing refers to ('chunksync gc' runs it at once)")
	f.BoolVar(&opts.Debug, "debug", false, "log at debug level")
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
		SessionIdle:  opts.SessionIdle,
		Logger:       log,
		KeepVersions: opts.Keep,
		CollectEvery: opts.GCEvery,
		Checkpoint:   checkpoint,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Fprintf(st.Out, "listening on %s\nfingerprint %s\n", srv.Addr(), srv.Fingerprint())
	log.Info("serving", "addr", srv.Addr().String(), "fingerprint", srv.Fingerprint(), "data", opts.Data)
	err = srv.Serve(ctx)
	log.Info("stopped")
	return err
}

// envCrashAt names the variable that makes serve kill itself, for crash
// tests: "POINT" or "POINT:N" sends SIGKILL to the server the Nth time (1
// by default) it passes POINT, one of the transport.Checkpoint* and
// index.CheckpointGCUnrecorded names. Unset, it costs nothing.
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
	known := []string{transport.CheckpointCommitAssembled, transport.CheckpointCommitRenamed,
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
