package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/engine"
)

// newChunkersCommand returns the chunkers command.
func newChunkersCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "chunkers",
		Short: "List the chunking strategies push --chunker accepts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runChunkers(streamsOf(cmd))
		},
	}
}

// runChunkers prints the chunker registry.
func runChunkers(st ioStreams) error {
	tw := tabwriter.NewWriter(st.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tMIN\tAVG\tMAX\tDESCRIPTION")
	fmt.Fprintf(tw, "%s (default)\t-\t-\t-\tpicks per file: %s content-defined chunks for data that compresses, fixed chunks sent uncompressed for data compressed already (archives, media)\n",
		engine.AutoChunker, engine.DefaultCDC)
	for _, k := range engine.ChunkerKinds() {
		name := k.Name
		d := k.Defaults
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name,
			formatBytes(int64(d.Min)), formatBytes(int64(d.Avg)), formatBytes(int64(d.Max)), k.Doc)
	}
	return tw.Flush()
}
