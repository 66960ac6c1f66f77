package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// gcOptions are the flags of the gc command.
type gcOptions struct {
	connect connectOptions
	JSON    bool
}

// gcReport is gc --json's output.
type gcReport struct {
	Server string `json:"server"`
	// Versions and Sessions count the versions and open upload sessions
	// whose chunks were kept; ChunksMarked the distinct chunks they name.
	Versions     int `json:"versions"`
	Sessions     int `json:"sessions"`
	ChunksMarked int `json:"chunks_marked"`
	// ChunksDeleted and the freed bytes count what nothing referred to.
	ChunksDeleted    int   `json:"chunks_deleted"`
	RawBytesFreed    int64 `json:"raw_bytes_freed"`
	StoredBytesFreed int64 `json:"stored_bytes_freed"`
	// ChunksKeptForPushes were unreferenced but asked about by a running
	// push; OrphansDeleted were stored files the index did not know.
	ChunksKeptForPushes int     `json:"chunks_kept_for_pushes"`
	OrphansDeleted      int     `json:"orphans_deleted"`
	Seconds             float64 `json:"seconds"`
}

// newGCCommand returns the gc command.
func newGCCommand() *cobra.Command {
	var opts gcOptions
	cmd := &cobra.Command{
		Use:   "gc [flags]",
		Short: "Prune old versions on the server and delete the chunks nothing refers to",
		Long: `Gc asks the server to run its garbage collection now (it also runs every
--gc-every on its own): every file is pruned to the newest versions the
server keeps (serve --keep), and the chunks that no kept version and no open
upload session refers to are deleted. Pushes may run meanwhile: a chunk a
running push was told the server holds is never deleted under it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.connect.resolve(cmd.Flags()); err != nil {
				return err
			}
			ctx, st := cmd.Context(), streamsOf(cmd)
			client, err := opts.connect.dial(ctx, dataOptions{}, 0, st.Err)
			if err != nil {
				return err
			}
			defer client.Close()
			gs, err := client.Collect(ctx)
			if err != nil {
				return err
			}
			rep := gcReport{
				Server: opts.connect.Server, Versions: gs.Versions, Sessions: gs.Sessions, ChunksMarked: gs.ChunksMarked,
				ChunksDeleted: gs.ChunksDeleted, RawBytesFreed: gs.RawBytesFreed, StoredBytesFreed: gs.StoredBytesFreed,
				ChunksKeptForPushes: gs.ChunksKeptForPushes, OrphansDeleted: gs.OrphansDeleted, Seconds: gs.Duration.Seconds(),
			}
			if opts.JSON {
				return writeJSON(st.Out, rep)
			}
			tw := tabwriter.NewWriter(st.Out, 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "garbage collected on %s in %.2f s\n", rep.Server, rep.Seconds)
			fmt.Fprintf(tw, "  kept\t%d chunks of %d versions and %d open sessions\n", rep.ChunksMarked, rep.Versions, rep.Sessions)
			fmt.Fprintf(tw, "  deleted\t%d chunks, %s stored (%s raw); %d orphaned files\n", rep.ChunksDeleted,
				formatBytes(rep.StoredBytesFreed), formatBytes(rep.RawBytesFreed), rep.OrphansDeleted)
			if rep.ChunksKeptForPushes > 0 {
				fmt.Fprintf(tw, "  spared\t%d unreferenced chunks a running push asked about\n", rep.ChunksKeptForPushes)
			}
			return tw.Flush()
		},
	}
	opts.connect.addFlags(cmd.Flags())
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print what was collected as one JSON object on stdout")
	return cmd
}
