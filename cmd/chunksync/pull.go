package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// pullOptions are the flags of the pull command.
type pullOptions struct {
	connect connectOptions
	Version uint64
	Seeds   []string
	BWLimit rateLimit
	data    dataOptions
	JSON    bool
	Quiet   bool
}

// newPullCommand returns the pull command.
func newPullCommand() *cobra.Command {
	var opts pullOptions
	cmd := &cobra.Command{
		Use:   "pull [flags] REMOTE_PATH LOCAL",
		Short: "Fetch a file from the server, reusing every chunk found locally",
		Long: `Pull fetches the latest version of REMOTE_PATH (or --version N) into LOCAL
(a LOCAL that is a directory or ends in / keeps the remote file's name).

The local file that LOCAL replaces, and every --seed file, are cut the way
the version was cut; every chunk found in them is copied locally and only
the rest is fetched, compressed. The new file is written beside LOCAL under
a temporary name, verified (BLAKE3 and MD5 of the whole file) and only then
renamed over LOCAL, so LOCAL is always the old file or the new one. A pull
that is interrupted keeps what it wrote: running the same command again
fetches only the rest.

--bwlimit takes rclone's form: 10M is 10 MiB/s, a bare number is KiB/s,
off or 0 is no limit.`,
		Example: `  chunksync pull images/disk.img disk.img
  chunksync pull --version 3 --seed old-build.tar --json builds/app.tar ./
  chunksync pull --bwlimit 5M images/disk.img disk.img`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st := streamsOf(cmd)
			err := opts.connect.resolve(cmd.Flags())
			if err == nil {
				err = runPull(cmd.Context(), opts, args, st)
			}
			if err != nil && opts.JSON {
				writeJSON(st.Out, pullFailure{
					Error: err.Error(), ExitCode: exitCode(cmd.Context(), err), Server: opts.connect.Server,
					Path: args[0], Local: localName(args[0], args[1]),
				})
			}
			return err
		},
	}
	f := cmd.Flags()
	opts.connect.addFlags(f)
	f.Uint64Var(&opts.Version, "version", 0, "version to fetch (default: the latest); 'chunksync versions PATH' lists them")
	f.StringArrayVar(&opts.Seeds, "seed", nil, "another local file that may hold chunks of the new version (repeatable)")
	f.Var(&opts.BWLimit, "bwlimit", "limit the download rate, like 10M (MiB/s); a bare number is KiB/s")
	opts.data.addFlags(f)
	f.BoolVar(&opts.JSON, "json", false, "print the result (or the error) as one JSON object on stdout")
	f.BoolVarP(&opts.Quiet, "quiet", "q", false, "print nothing but errors (and the JSON result with --json)")
	return cmd
}

// localName returns where a pull of remotePath into local writes: local
// itself, or, when local names a directory, the remote file's name in it.
func localName(remotePath, local string) string {
	if strings.HasSuffix(local, "/") || strings.HasSuffix(local, string(filepath.Separator)) {
		return filepath.Join(local, path.Base(remotePath))
	}
	if fi, err := os.Stat(local); err == nil && fi.IsDir() {
		return filepath.Join(local, path.Base(remotePath))
	}
	return local
}

// pullReport is what a pull did; its JSON form is pull --json's output.
type pullReport struct {
	Path    string `json:"path"`
	Local   string `json:"local"`
	Server  string `json:"server"`
	Version uint64 `json:"version"`
	transferStats
	// ChunksReused and BytesReused count what came from the local file,
	// the seeds, or an earlier interrupted pull; BytesResumed is the part
	// of that found already in place in the interrupted pull's file.
	ChunksReused int   `json:"chunks_reused"`
	BytesReused  int64 `json:"bytes_reused"`
	BytesResumed int64 `json:"bytes_resumed"`
	// ChunksFetched and BytesFetched count the chunks fetched from the
	// server, BytesFetched before compression.
	ChunksFetched int   `json:"chunks_fetched"`
	BytesFetched  int64 `json:"bytes_fetched"`
}

// pullFailure is pull --json's output when the pull fails.
type pullFailure struct {
	Error    string `json:"error"`
	ExitCode int    `json:"exit_code"`
	Path     string `json:"path"`
	Local    string `json:"local"`
	Server   string `json:"server"`
}

// runPull pulls args[0] into args[1] and prints the result.
func runPull(ctx context.Context, opts pullOptions, args []string, st ioStreams) error {
	remotePath, local := args[0], localName(args[0], args[1])
	if err := opts.data.check(); err != nil {
		return err
	}
	for _, s := range opts.Seeds {
		if err := checkRegular(s); err != nil {
			return fmt.Errorf("--seed: %w", err)
		}
	}
	client, err := opts.connect.dial(ctx, opts.data, int64(opts.BWLimit), st.Err)
	if err != nil {
		return err
	}
	defer client.Close()
	rep, err := pullFile(ctx, client, opts, remotePath, local, st.Err)
	if err != nil {
		return err
	}
	switch {
	case opts.JSON:
		return writeJSON(st.Out, rep)
	case !opts.Quiet:
		rep.writeSummary(st.Out)
	}
	return nil
}

// pullFile fetches the manifest of the wanted version and pulls it into
// local. The wire counts are the client's since it was dialled.
func pullFile(ctx context.Context, client *transport.Client, opts pullOptions, remotePath, local string, progress io.Writer) (pullReport, error) {
	v, m, err := client.Manifest(ctx, remotePath, opts.Version)
	if err != nil {
		return pullReport{}, err
	}
	prog := newPullProgress(progress, filepath.Base(local), m.Size, !opts.Quiet)
	res, err := engine.Pull(ctx, client, m, local, engine.PullOptions{Seeds: opts.Seeds, Progress: prog})
	prog.finish(err == nil)
	if err != nil {
		if ctx.Err() != nil {
			return pullReport{}, fmt.Errorf("pull of %s interrupted: run the same command again to resume: %w", remotePath, err)
		}
		return pullReport{}, err
	}
	rep := pullReport{
		Path:          remotePath,
		Local:         local,
		Server:        opts.connect.Server,
		Version:       v.Number,
		transferStats: newTransferStats(client, m, res.Duration),
		ChunksReused:  res.ChunksReused,
		BytesReused:   res.BytesReused,
		BytesResumed:  res.Resumed,
		ChunksFetched: res.ChunksFetched,
		BytesFetched:  res.BytesFetched,
	}
	return rep, nil
}

// writeSummary prints the report for people.
func (r pullReport) writeSummary(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "pulled %s version %d from %s into %s\n", r.Path, r.Version, r.Server, r.Local)
	r.writeSize(tw)
	fmt.Fprintf(tw, "  reused\t%d chunks, %s (%s already in place from an interrupted pull)\n", r.ChunksReused, formatBytes(r.BytesReused), formatBytes(r.BytesResumed))
	fmt.Fprintf(tw, "  fetched\t%d chunks, %s of chunk data\n", r.ChunksFetched, formatBytes(r.BytesFetched))
	r.writeCost(tw)
	tw.Flush()
}
