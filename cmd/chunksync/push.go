package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// defaultChunker is the chunker a push uses unless --chunker says
// otherwise: a choice per file, from what its first bytes hold.
const defaultChunker = engine.AutoChunker

// pushOptions are the flags of the push command.
type pushOptions struct {
	connect       connectOptions
	Chunker       string
	Min, Avg, Max byteSize
	data          dataOptions
	BWLimit       rateLimit
	JSON          bool
	Quiet         bool
}

// newPushCommand returns the push command.
func newPushCommand() *cobra.Command {
	var opts pushOptions
	cmd := &cobra.Command{
		Use:   "push [flags] LOCAL REMOTE_PATH",
		Short: "Send a file to the server, transferring only the chunks it lacks",
		Long: `Push sends the file LOCAL to the server, where it becomes the latest version
of REMOTE_PATH (relative to the server's files directory; a REMOTE_PATH that
ends in / names a directory and the file keeps its name).

The file is cut into chunks; only the chunks the server lacks are sent,
compressed. The server verifies every chunk and the whole file (BLAKE3 and
MD5) before the new version becomes visible. A push that is interrupted
leaves what it sent on the server: running the same command again resumes.

Sizes take binary suffixes: 256K, 1M, 1.5MiB. --bwlimit takes rclone's form:
10M is 10 MiB/s, a bare number is KiB/s, off or 0 is no limit.`,
		Example: `  chunksync push --token "$TOKEN" --server backup:4433 disk.img images/
  chunksync push --chunker fixed --avg 4M --bwlimit 20M --json db.sqlite db/main.sqlite`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st := streamsOf(cmd)
			err := opts.connect.resolve(cmd.Flags())
			if err == nil {
				err = runPush(cmd.Context(), opts, args, st)
			}
			if err != nil && opts.JSON {
				writeJSON(st.Out, newPushFailure(cmd.Context(), err, args, opts.connect.Server))
			}
			return err
		},
	}
	f := cmd.Flags()
	opts.connect.addFlags(f)
	f.StringVar(&opts.Chunker, "chunker", defaultChunker, "chunking strategy, or auto to pick one per file from its content; 'chunksync chunkers' lists them")
	f.Var(&opts.Min, "min", "smallest chunk size (default: the chunker's)")
	f.Var(&opts.Avg, "avg", "average chunk size, the chunk size for fixed-size chunkers (default: the chunker's)")
	f.Var(&opts.Max, "max", "largest chunk size (default: the chunker's)")
	opts.data.addFlags(f)
	f.Var(&opts.BWLimit, "bwlimit", "limit the upload rate, like 10M (MiB/s); a bare number is KiB/s")
	f.BoolVar(&opts.JSON, "json", false, "print the result (or the error) as one JSON object on stdout")
	f.BoolVarP(&opts.Quiet, "quiet", "q", false, "print nothing but errors (and the JSON result with --json)")
	return cmd
}

// runPush pushes args[0] to the server as args[1] and prints the result.
func runPush(ctx context.Context, opts pushOptions, args []string, st ioStreams) error {
	local, remotePath := args[0], remoteName(args[0], args[1])
	if err := opts.data.check(); err != nil {
		return err
	}
	strategy, err := opts.strategy()
	if err != nil {
		return err
	}
	if err := checkRegular(local); err != nil {
		return err
	}
	if opts.Chunker == engine.AutoChunker {
		if strategy, err = autoStrategy(local); err != nil {
			return err
		}
	}
	client, err := opts.connect.dial(ctx, opts.data, int64(opts.BWLimit), st.Err)
	if err != nil {
		return err
	}
	defer client.Close()
	rep, err := pushFile(ctx, client, opts.connect.Server, local, remotePath, strategy, st.Err, !opts.Quiet)
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

// remoteName returns the remote path for local: remote itself, or, when
// remote names a directory (it ends in / or is "."), local's name in it.
func remoteName(local, remote string) string {
	if remote == "." || remote == "./" {
		return filepath.Base(local)
	}
	if strings.HasSuffix(remote, "/") {
		return path.Join(remote, filepath.Base(local))
	}
	return remote
}

// checkRegular refuses what engine.Push cannot send, before a connection
// is made for nothing.
func checkRegular(local string) error {
	fi, err := os.Stat(local)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", local)
	}
	return nil
}

// strategy is how a push cuts and encodes a file, and why.
type strategy struct {
	Params engine.ChunkerParams
	// Raw sends chunks uncompressed: the data is compressed already.
	Raw bool
	// Content is what the file holds, as far as its first bytes tell.
	Content string
	// Reason says why the strategy was chosen.
	Reason string
}

// strategy returns the strategy the flags give, or refuses them; with
// --chunker auto the file's content decides later (autoStrategy).
func (o *pushOptions) strategy() (strategy, error) {
	if o.Chunker != engine.AutoChunker {
		p, err := o.chunkerParams()
		return strategy{Params: p, Reason: "--chunker " + o.Chunker}, err
	}
	if o.Min != 0 || o.Avg != 0 || o.Max != 0 {
		return strategy{}, usagef("--min, --avg and --max need a --chunker: auto picks the sizes itself")
	}
	return strategy{}, nil
}

// autoStrategy detects what local holds from its first bytes and picks the
// chunker and codec for it.
func autoStrategy(local string) (strategy, error) {
	f, err := os.Open(local)
	if err != nil {
		return strategy{}, err
	}
	defer f.Close()
	sample := make([]byte, engine.DetectSampleSize)
	n, err := io.ReadFull(f, sample)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return strategy{}, fmt.Errorf("read %s: %w", local, err)
	}
	c := engine.DetectContent(sample[:n])
	p, why := engine.ChooseChunker(c)
	reason := why + " (" + c.Reason + ")"
	if c.Compressed {
		reason += "; sent uncompressed"
	}
	return strategy{Params: p, Raw: c.Compressed, Content: c.Kind, Reason: reason}, nil
}

// chunkerParams returns the chunker's defaults overridden by --min, --avg
// and --max. For chunkers that cut one size (min, avg and max equal), any
// one of the three sets that size.
func (o *pushOptions) chunkerParams() (engine.ChunkerParams, error) {
	kind, err := engine.LookupChunker(o.Chunker)
	if err != nil {
		return engine.ChunkerParams{}, usageError{fmt.Errorf("--chunker: %w", err)}
	}
	p := kind.Defaults
	oneSize := p.Min == p.Avg && p.Avg == p.Max
	given := []struct {
		flag string
		v    byteSize
		dst  *uint32
	}{{"min", o.Min, &p.Min}, {"avg", o.Avg, &p.Avg}, {"max", o.Max, &p.Max}}
	var size uint32
	for _, g := range given {
		if g.v == 0 {
			continue
		}
		if g.v < 0 || g.v > math.MaxUint32 {
			return p, usagef("--%s %d: out of range", g.flag, g.v)
		}
		v := uint32(g.v)
		if !oneSize {
			*g.dst = v
			continue
		}
		if size != 0 && v != size {
			return p, usagef("chunker %s cuts chunks of one size: give it once, with --avg", p.Name)
		}
		size = v
	}
	if oneSize && size != 0 {
		p.Min, p.Avg, p.Max = size, size, size
	}
	if err := engine.ValidateParams(p); err != nil {
		return p, usageError{err}
	}
	return p, nil
}

// pushReport is what a push did; its JSON form is push --json's output.
type pushReport struct {
	// Local is the pushed file, Path its name on Server.
	Local  string `json:"local"`
	Path   string `json:"path"`
	Server string `json:"server"`
	transferStats
	// ChunksSent counts the chunks the server lacked; BytesSent is their
	// payload as sent (zstd-compressed, or as deltas against the chunks
	// they replaced), RawBytesSent their size before.
	ChunksSent   int    `json:"chunks_sent"`
	BytesSent    int64  `json:"bytes_sent"`
	RawBytesSent int64  `json:"raw_bytes_sent"`
	Session      string `json:"session"`
	Version      uint64 `json:"version"`
	// Content is what the file holds (with --chunker auto) and Reason why
	// it was cut and encoded as it was.
	Content string `json:"content,omitempty"`
	Reason  string `json:"reason"`
}

// pushFile pushes local as remotePath through client, drawing progress bars
// on progress when show is set and it is a terminal. The wire counts are
// the client's since it was dialled, so give each push its own client.
func pushFile(ctx context.Context, client *transport.Client, server, local, remotePath string, how strategy, progress io.Writer, show bool) (pushReport, error) {
	fi, err := os.Stat(local)
	if err != nil {
		return pushReport{}, err
	}
	prog := newPushProgress(progress, filepath.Base(local), fi.Size(), show)
	res, err := engine.Push(ctx, client, local, remotePath, engine.PushOptions{Chunker: how.Params, Raw: how.Raw, Progress: prog})
	prog.finish(err == nil)
	if err != nil {
		if res.Session == "" {
			return pushReport{}, err
		}
		return pushReport{}, &pushError{
			err: err, local: local, server: server, session: res.Session,
			synced: prog.synced(), size: fi.Size(), interrupted: ctx.Err() != nil,
		}
	}
	rep := pushReport{
		Local:         local,
		Path:          remotePath,
		Server:        server,
		transferStats: newTransferStats(client, res.Manifest, res.Duration),
		ChunksSent:    res.ChunksSent,
		BytesSent:     res.BytesSent,
		RawBytesSent:  res.RawBytesSent,
		Session:       res.Session,
		Version:       res.Version,
		Content:       how.Content,
		Reason:        how.Reason,
	}
	return rep, nil
}

// writeSummary prints the report for people.
func (r pushReport) writeSummary(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "pushed %s to %s as %s, version %d\n", r.Local, r.Server, r.Path, r.Version)
	r.writeSize(tw)
	fmt.Fprintf(tw, "  why\t%s\n", r.Reason)
	fmt.Fprintf(tw, "  sent\t%d chunks: %s payload for %s of chunk data\n", r.ChunksSent, formatBytes(r.BytesSent), formatBytes(r.RawBytesSent))
	r.writeCost(tw)
	fmt.Fprintf(tw, "  session\t%s\n", r.Session)
	tw.Flush()
}

// pushError is a push that stopped after the server opened its session:
// what arrived is stored, and the same push run again resumes.
type pushError struct {
	err                    error
	local, server, session string
	synced, size           int64
	interrupted            bool
}

// Error says where the push stopped and how to resume it.
func (e *pushError) Error() string {
	what := e.err.Error()
	if e.interrupted {
		what = fmt.Sprintf("push %s interrupted", e.local)
	}
	return fmt.Sprintf("%s; %s of %s are on %s in session %s: run the same command again to resume, or 'chunksync cancel %s' to drop the session",
		what, formatBytes(e.synced), formatBytes(e.size), e.server, e.session, e.session)
}

// Unwrap returns why the push stopped.
func (e *pushError) Unwrap() error { return e.err }

// pushFailure is push --json's output when the push fails.
type pushFailure struct {
	Error    string `json:"error"`
	ExitCode int    `json:"exit_code"`
	Local    string `json:"local,omitempty"`
	Path     string `json:"path,omitempty"`
	Server   string `json:"server"`
	Session  string `json:"session,omitempty"`
	// Synced is how many bytes of the file the server holds, when the push
	// got as far as opening a session.
	Synced int64 `json:"synced_bytes,omitempty"`
	Size   int64 `json:"size,omitempty"`
}

// newPushFailure describes err, the failure of a push of args, for --json.
func newPushFailure(ctx context.Context, err error, args []string, server string) pushFailure {
	f := pushFailure{Error: err.Error(), ExitCode: exitCode(ctx, err), Server: server}
	if len(args) == 2 {
		f.Local, f.Path = args[0], remoteName(args[0], args[1])
	}
	var pe *pushError
	if errors.As(err, &pe) {
		f.Session, f.Synced, f.Size = pe.session, pe.synced, pe.size
	}
	return f
}
