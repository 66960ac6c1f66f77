package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/index"
)

// statusOptions are the flags of the status command.
type statusOptions struct {
	connect connectOptions
	JSON    bool
}

// newStatusCommand returns the status command.
func newStatusCommand() *cobra.Command {
	var opts statusOptions
	cmd := &cobra.Command{
		Use:   "status [flags]",
		Short: "List this token's open upload sessions and their progress",
		Long: `Status lists the upload sessions that pushes with this token left open on the
server: pushes in progress and pushes that were interrupted. For each it shows
how many chunks the push listed so far, how many of them the server stores,
how many are still missing, and how many bytes of the file are stored.

Running an interrupted push again resumes its session; 'chunksync cancel'
drops one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.connect.resolve(cmd.Flags()); err != nil {
				return err
			}
			return runStatus(cmd.Context(), opts, streamsOf(cmd))
		},
	}
	opts.connect.addFlags(cmd.Flags())
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the sessions as a JSON array on stdout")
	return cmd
}

// sessionStatus is one session in status --json's output.
type sessionStatus struct {
	ID      string `json:"id"`
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	Chunker string `json:"chunker"`
	// Chunks and Bytes count the chunks the push has listed so far.
	Chunks       int       `json:"chunks"`
	Bytes        int64     `json:"bytes"`
	ChunksStored int       `json:"chunks_stored"`
	BytesStored  int64     `json:"bytes_stored"`
	Missing      int       `json:"missing"`
	Created      time.Time `json:"created"`
	Updated      time.Time `json:"updated"`
}

// newSessionStatus converts what the server reports of a session.
func newSessionStatus(sp index.SessionProgress) sessionStatus {
	return sessionStatus{
		ID:           sp.ID,
		Path:         sp.Spec.Path,
		Size:         sp.Spec.Size,
		Chunker:      sp.Spec.Chunker.String(),
		Chunks:       sp.Chunks,
		Bytes:        sp.Bytes,
		ChunksStored: sp.ChunksStored,
		BytesStored:  sp.BytesStored,
		Missing:      sp.Missing(),
		Created:      sp.Created,
		Updated:      sp.Updated,
	}
}

// runStatus lists the sessions of the token.
func runStatus(ctx context.Context, opts statusOptions, st ioStreams) error {
	client, err := opts.connect.dial(ctx, dataOptions{}, 0, st.Err)
	if err != nil {
		return err
	}
	defer client.Close()
	list, err := client.Sessions(ctx)
	if err != nil {
		return err
	}
	out := make([]sessionStatus, 0, len(list))
	for _, sp := range list {
		out = append(out, newSessionStatus(sp))
	}
	if opts.JSON {
		return writeJSON(st.Out, out)
	}
	if len(out) == 0 {
		fmt.Fprintf(st.Out, "no open sessions on %s\n", opts.connect.Server)
		return nil
	}
	now := time.Now()
	tw := tabwriter.NewWriter(st.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tPATH\tSIZE\tLISTED\tSTORED\tMISSING\tBYTES STORED\tUPDATED")
	for _, s := range out {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s / %s\t%s (%s ago)\n",
			s.ID, s.Path, formatBytes(s.Size), s.Chunks, s.ChunksStored, s.Missing,
			formatBytes(s.BytesStored), formatBytes(s.Size),
			s.Updated.Local().Format(time.DateTime), now.Sub(s.Updated).Round(time.Second))
	}
	return tw.Flush()
}
