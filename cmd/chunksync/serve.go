package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

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
	srv, err := transport.NewServer(transport.ServerConfig{
		DataDir:      opts.Data,
		FilesDir:     opts.Files,
		Listen:       opts.Listen,
		FECListen:    opts.FECListen,
		SessionIdle:  opts.SessionIdle,
		Logger:       log,
		KeepVersions: opts.Keep,
		CollectEvery: opts.GCEvery,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
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
