package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/transport"
)

// fingerprintOptions are the flags of the fingerprint command.
type fingerprintOptions struct {
	Data string
}

// newFingerprintCommand returns the fingerprint command.
func newFingerprintCommand() *cobra.Command {
	var opts fingerprintOptions
	cmd := &cobra.Command{
		Use:   "fingerprint --data DIR",
		Short: "Print the server's identity fingerprint for clients to pin",
		Long: `Fingerprint prints the fingerprint of the server identity kept in the data
directory, for clients' --fingerprint. The server creates its identity when it
first starts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFingerprint(opts, streamsOf(cmd))
		},
	}
	cmd.Flags().StringVar(&opts.Data, "data", "", "the server's data directory")
	cmd.MarkFlagRequired("data")
	return cmd
}

// runFingerprint prints the fingerprint.
func runFingerprint(opts fingerprintOptions, st ioStreams) error {
	fp, err := transport.ReadFingerprint(opts.Data)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(st.Out, fp)
	return err
}
