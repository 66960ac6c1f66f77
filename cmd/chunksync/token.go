package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/transport"
)

// tokenNewOptions are the flags of the token new command.
type tokenNewOptions struct {
	Data string
	Name string
}

// newTokenCommand returns the token command, the parent of token new.
func newTokenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage the client tokens a server accepts",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newTokenNewCommand())
	return cmd
}

// newTokenNewCommand returns the token new command.
func newTokenNewCommand() *cobra.Command {
	var opts tokenNewOptions
	cmd := &cobra.Command{
		Use:   "new --data DIR [--name NAME]",
		Short: "Create a client token and print it",
		Long: `New creates a client token for the server with the given data directory and
prints it on stdout, alone, so that TOKEN=$(chunksync token new --data DIR)
works. The server keeps only a hash of it; a running server accepts it at
once. Upload sessions belong to the token's name, so a name the server
already has is refused.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTokenNew(opts, streamsOf(cmd))
		},
	}
	cmd.Flags().StringVar(&opts.Data, "data", "", "the server's data directory")
	cmd.Flags().StringVar(&opts.Name, "name", "default", "what to call the token (one word, not yet in use)")
	cmd.MarkFlagRequired("data")
	return cmd
}

// runTokenNew creates a token and prints it.
func runTokenNew(opts tokenNewOptions, st ioStreams) error {
	token, err := transport.NewToken(opts.Data, opts.Name)
	if err != nil {
		return fmt.Errorf("%s: %w", opts.Data, err)
	}
	_, err = fmt.Fprintln(st.Out, token)
	return err
}
