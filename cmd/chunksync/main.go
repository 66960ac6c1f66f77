package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/transport"
)

// Exit codes; doc.go lists them for users.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitInterrupted = 3
	exitProblems    = 4
	exitUnreachable = 10
	exitRefused     = 11
)

// memoryLimit is the soft heap limit the binary runs with unless GOMEMLIMIT
// says otherwise. The pipelines hold about 100 MiB at most; without a limit
// the garbage collector lets the heap grow to twice that before it runs,
// and a long transfer's RSS drifts upwards. serve replaces it with its
// server's own (transport.Server.MemoryLimit), which follows --memory and
// --chunk-cache.
const memoryLimit = 160 << 20

// setMemoryLimit makes n bytes the runtime's soft memory limit, unless
// GOMEMLIMIT set one.
func setMemoryLimit(n int64) {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(n)
	}
}

func main() {
	setMemoryLimit(memoryLimit)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal cancels the context and lets the command stop
	// cleanly; restoring the default handling then makes a second signal
	// kill the process at once.
	context.AfterFunc(ctx, stop)
	code := execute(ctx, os.Args[1:], ioStreams{Out: os.Stdout, Err: os.Stderr})
	stop()
	os.Exit(code)
}

// ioStreams are where a command writes: results to Out, progress, logs and
// errors to Err.
type ioStreams struct {
	Out, Err io.Writer
}

// streamsOf returns the writers cobra was given for cmd.
func streamsOf(cmd *cobra.Command) ioStreams {
	return ioStreams{Out: cmd.OutOrStdout(), Err: cmd.ErrOrStderr()}
}

// newRootCommand builds the whole command tree. It holds no global state,
// so tests build a fresh one per run.
func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "chunksync",
		Short: "Keep large files in sync, sending only the chunks that changed",
		Long: `chunksync keeps large, changing files in sync with a chunksync server.
It cuts files into content-defined chunks, asks the server which chunks it
already holds, and sends only the missing ones, compressed, over parallel
QUIC streams. An interrupted push resumes where it stopped.

Start a server, make a token, and push:

  chunksync serve --data /srv/chunksync
  TOKEN=$(chunksync token new --data /srv/chunksync --name laptop)
  chunksync push --token "$TOKEN" disk.img images/disk.img

Or see it all at once on sample data: chunksync demo`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return usageError{err}
	})
	root.AddCommand(
		newServeCommand(),
		newTokenCommand(),
		newFingerprintCommand(),
		newPushCommand(),
		newPullCommand(),
		newLsCommand(),
		newVersionsCommand(),
		newGCCommand(),
		newVerifyCommand(),
		newStatusCommand(),
		newCancelCommand(),
		newChunkersCommand(),
		newBenchCommand(),
		newDemoCommand(),
	)
	return root
}

// execute runs the command line args and returns the process exit code. It
// prints the error, if any, to st.Err as "chunksync: message".
func execute(ctx context.Context, args []string, st ioStreams) int {
	root := newRootCommand()
	root.SetArgs(args)
	root.SetOut(st.Out)
	root.SetErr(st.Err)
	// Errors cobra returns before a command's RunE starts (unknown
	// commands and flags, wrong argument counts, missing required flags)
	// are usage errors.
	started := false
	markStarted(root, &started)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	if !started {
		err = usageError{err}
	}
	code := exitCode(ctx, err)
	fmt.Fprintf(st.Err, "chunksync: %v\n", err)
	if code == exitUsage && cmd != nil {
		fmt.Fprintf(st.Err, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

// markStarted wraps the RunE of c and its subcommands so that *started
// becomes true once a command's own code runs.
func markStarted(c *cobra.Command, started *bool) {
	if run := c.RunE; run != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			*started = true
			return run(cmd, args)
		}
	}
	for _, sub := range c.Commands() {
		markStarted(sub, started)
	}
}

// usageError marks an error in how the command was called.
type usageError struct{ err error }

// Error returns the message of the wrapped error.
func (e usageError) Error() string { return e.err.Error() }

// Unwrap returns the wrapped error.
func (e usageError) Unwrap() error { return e.err }

// usagef returns a usageError with a formatted message.
func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// exitCode maps err to the process exit code. A cancelled ctx means the
// user interrupted the command, whatever error that caused on the way out.
func exitCode(ctx context.Context, err error) int {
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case ctx.Err() != nil:
		return exitInterrupted
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, transport.ErrAuth), errors.Is(err, transport.ErrIdentity):
		return exitRefused
	case errors.Is(err, transport.ErrUnreachable):
		return exitUnreachable
	case errors.Is(err, errProblemsFound):
		return exitProblems
	}
	return exitError
}
