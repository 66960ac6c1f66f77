package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
)

// cancelOptions are the flags of the cancel command.
type cancelOptions struct {
	connect connectOptions
}

// newCancelCommand returns the cancel command.
func newCancelCommand() *cobra.Command {
	var opts cancelOptions
	cmd := &cobra.Command{
		Use:   "cancel [flags] SESSION...",
		Short: "Drop upload sessions that interrupted pushes left open",
		Long: `Cancel drops upload sessions, as 'chunksync status' lists them. A push of the
file after that starts a new session; chunks the dropped session stored stay on
the server until garbage collection, so a new push still skips them until then.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.connect.resolve(cmd.Flags()); err != nil {
				return err
			}
			return runCancel(cmd.Context(), opts, args, streamsOf(cmd))
		},
	}
	opts.connect.addFlags(cmd.Flags())
	return cmd
}

// runCancel drops the sessions named by args, stopping at the first error.
func runCancel(ctx context.Context, opts cancelOptions, args []string, st ioStreams) error {
	client, err := opts.connect.dial(ctx, dataOptions{}, 0, st.Err)
	if err != nil {
		return err
	}
	defer client.Close()
	for _, id := range args {
		if err := client.CancelSession(ctx, id); err != nil {
			return fmt.Errorf("%s: %w", opts.connect.Server, err)
		}
		fmt.Fprintf(st.Out, "cancelled session %s\n", id)
	}
	return nil
}
