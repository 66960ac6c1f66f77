package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/index"
	"github.com/chunksync/chunksync/transport"
)

// errProblemsFound is what verify returns when it found damage; main
// turns it into exitProblems.
var errProblemsFound = errors.New("the data directory has problems")

// verifyOptions are the flags of the verify command.
type verifyOptions struct {
	Data  string
	Files string
	Quick bool
	JSON  bool
}

// verifyReport is verify --json's output.
type verifyReport struct {
	Data     string          `json:"data"`
	Clean    bool            `json:"clean"`
	Problems []verifyProblem `json:"problems"`
	// What was checked: stored chunks and their raw bytes, index records,
	// versions and the content bytes reassembled, sessions, materialised
	// files and their bytes.
	Chunks       int     `json:"chunks"`
	ChunkBytes   int64   `json:"chunk_bytes"`
	Records      int     `json:"records"`
	Versions     int     `json:"versions"`
	VersionBytes int64   `json:"version_bytes"`
	Sessions     int     `json:"sessions"`
	Files        int     `json:"files"`
	FileBytes    int64   `json:"file_bytes"`
	Seconds      float64 `json:"seconds"`
}

// verifyProblem is one problem in verify --json's output.
type verifyProblem struct {
	Kind   string `json:"kind"`
	Object string `json:"object"`
	Detail string `json:"detail"`
}

// newVerifyCommand returns the verify command.
func newVerifyCommand() *cobra.Command {
	var opts verifyOptions
	cmd := &cobra.Command{
		Use:   "verify --data DIR [flags]",
		Short: "Check a stopped server's data directory for damage",
		Long: `Verify checks a server's data directory and reports every problem it finds:
it reads every stored chunk (decoding it and checking its BLAKE3 against its
name), matches the index's chunk records with the store (recorded but
missing, stored but unrecorded, size or codec that disagree), decodes every
index record, checks every version's manifest against the index and
reassembles every version to check its BLAKE3 and MD5 (--quick skips this,
the expensive part), checks the materialised file of each path's latest
version against that version's digests, and lists the temporary files that
interrupted writes left and the versions that a crash kept from being put
in place after their commit recorded them (the server finishes both when
it starts).

Run it on a stopped server: it refuses a data directory whose server is
running (the index is locked), and a server cannot start while it runs.
It changes nothing. Problems go to stdout, one a line (--json: one object),
progress to stderr. Exit status 0 when clean, 4 when it found problems,
1 when it could not check.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd, opts, streamsOf(cmd))
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Data, "data", "", "the server's data directory")
	f.StringVar(&opts.Files, "files", "", "the server's files directory (default DATA/files)")
	f.BoolVar(&opts.Quick, "quick", false, "do not reassemble every version to check its digests")
	f.BoolVar(&opts.JSON, "json", false, "print the result as one JSON object")
	cmd.MarkFlagRequired("data")
	return cmd
}

// runVerify verifies the data directory and prints what it found.
func runVerify(cmd *cobra.Command, opts verifyOptions, st ioStreams) error {
	start := time.Now()
	rep := verifyReport{Data: opts.Data, Problems: []verifyProblem{}}
	progress := newVerifyProgress(st.Err)
	vs, err := transport.VerifyData(cmd.Context(), transport.VerifyConfig{
		DataDir:  opts.Data,
		FilesDir: opts.Files,
		Options:  index.VerifyOptions{SkipContent: opts.Quick, Progress: progress.update},
	}, func(p index.Problem) {
		rep.Problems = append(rep.Problems, verifyProblem{Kind: string(p.Kind), Object: p.Object, Detail: p.Detail})
		if !opts.JSON {
			progress.clear()
			fmt.Fprintln(st.Out, p)
		}
	})
	progress.done()
	if err != nil {
		return err
	}
	rep.Clean = len(rep.Problems) == 0
	rep.Chunks, rep.ChunkBytes, rep.Records = vs.Chunks, vs.ChunkBytes, vs.Records
	rep.Versions, rep.VersionBytes, rep.Sessions = vs.Versions, vs.VersionBytes, vs.Sessions
	rep.Files, rep.FileBytes = vs.Files, vs.FileBytes
	rep.Seconds = time.Since(start).Seconds()
	if opts.JSON {
		if err := writeJSON(st.Out, rep); err != nil {
			return err
		}
	} else {
		content := "reassembled"
		if opts.Quick {
			content = "not reassembled (--quick)"
		}
		fmt.Fprintf(st.Out, "checked %d chunks (%s), %d chunk records, %d versions (%s %s), %d sessions, %d files (%s) in %.1f s: %d problems\n",
			rep.Chunks, formatBytes(rep.ChunkBytes), rep.Records, rep.Versions, formatBytes(rep.VersionBytes), content,
			rep.Sessions, rep.Files, formatBytes(rep.FileBytes), rep.Seconds, len(rep.Problems))
	}
	if !rep.Clean {
		return fmt.Errorf("%w: %d found", errProblemsFound, len(rep.Problems))
	}
	return nil
}

// verifyProgress shows how far verify has come on stderr: a line that
// rewrites itself on a terminal, a line per stage elsewhere.
type verifyProgress struct {
	w        io.Writer
	terminal bool
	stage    string
	last     time.Time
	shown    bool
}

func newVerifyProgress(w io.Writer) *verifyProgress {
	return &verifyProgress{w: w, terminal: isTerminal(w)}
}

// update is index.VerifyOptions.Progress; verification calls it from one
// goroutine.
func (p *verifyProgress) update(vp index.VerifyProgress) {
	if !p.terminal {
		if vp.Stage != p.stage {
			p.stage = vp.Stage
			fmt.Fprintf(p.w, "verify: checking %s (about %d)\n", vp.Stage, vp.Total)
		}
		return
	}
	now := time.Now()
	if vp.Stage == p.stage && now.Sub(p.last) < 200*time.Millisecond && vp.Done != vp.Total {
		return
	}
	p.stage, p.last = vp.Stage, now
	fmt.Fprintf(p.w, "\r\033[Kverify %s: %d of about %d, %s", vp.Stage, vp.Done, vp.Total, formatBytes(vp.Bytes))
	p.shown = true
}

// clear removes the progress line before other output.
func (p *verifyProgress) clear() {
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
		p.shown = false
	}
}

// done ends the progress output.
func (p *verifyProgress) done() { p.clear() }
