package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunksync/chunksync/index"
	"github.com/chunksync/chunksync/transport"
)

// catalogueOptions are the flags of ls and versions.
type catalogueOptions struct {
	connect connectOptions
	JSON    bool
}

// versionInfo is one version in the JSON output of ls and versions.
type versionInfo struct {
	Path    string    `json:"path"`
	Version uint64    `json:"version"`
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
	BLAKE3  string    `json:"blake3"`
	MD5     string    `json:"md5"`
	Chunker string    `json:"chunker"`
}

func newVersionInfo(v index.Version) versionInfo {
	return versionInfo{
		Path:    v.Path,
		Version: v.Number,
		Size:    v.Size,
		Created: v.Created,
		BLAKE3:  hex.EncodeToString(v.Digests.BLAKE3[:]),
		MD5:     hex.EncodeToString(v.Digests.MD5[:]),
		Chunker: v.Chunker.String(),
	}
}

// newLsCommand returns the ls command.
func newLsCommand() *cobra.Command {
	var opts catalogueOptions
	cmd := &cobra.Command{
		Use:   "ls [flags] [PREFIX]",
		Short: "List the files on the server with their latest version",
		Long: `Ls lists every file on the server whose path starts with PREFIX (all files
without one), sorted by path, with its latest version: number, size, time,
BLAKE3, MD5 and the chunker it was cut with. 'chunksync versions PATH' lists
every version the server keeps of one file.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			prefix := ""
			if len(args) == 1 {
				prefix = args[0]
			}
			return runCatalogue(cmd, &opts, func(ctx context.Context, c *transport.Client) ([]index.Version, error) {
				return c.List(ctx, prefix)
			})
		},
	}
	opts.connect.addFlags(cmd.Flags())
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the files as a JSON array on stdout")
	return cmd
}

// newVersionsCommand returns the versions command.
func newVersionsCommand() *cobra.Command {
	var opts catalogueOptions
	cmd := &cobra.Command{
		Use:   "versions [flags] PATH",
		Short: "List the versions the server keeps of one file",
		Long: `Versions lists the versions of the file PATH that the server keeps, oldest
first: number, size, time, BLAKE3, MD5 and the chunker each was cut with.
'chunksync pull --version N PATH LOCAL' fetches one of them. The server
keeps the newest versions of each file ('chunksync serve --keep') and
garbage collection reclaims the chunks only older ones held.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCatalogue(cmd, &opts, func(ctx context.Context, c *transport.Client) ([]index.Version, error) {
				return c.Versions(ctx, args[0])
			})
		},
	}
	opts.connect.addFlags(cmd.Flags())
	cmd.Flags().BoolVar(&opts.JSON, "json", false, "print the versions as a JSON array on stdout")
	return cmd
}

// runCatalogue connects, asks query and prints the versions it returns.
func runCatalogue(cmd *cobra.Command, opts *catalogueOptions, query func(context.Context, *transport.Client) ([]index.Version, error)) error {
	if err := opts.connect.resolve(cmd.Flags()); err != nil {
		return err
	}
	ctx, st := cmd.Context(), streamsOf(cmd)
	client, err := opts.connect.dial(ctx, dataOptions{}, 0, st.Err)
	if err != nil {
		return err
	}
	defer client.Close()
	list, err := query(ctx, client)
	if err != nil {
		return err
	}
	out := make([]versionInfo, 0, len(list))
	for _, v := range list {
		out = append(out, newVersionInfo(v))
	}
	if opts.JSON {
		return writeJSON(st.Out, out)
	}
	return writeVersions(st.Out, out)
}

// writeVersions prints versions as a table for people.
func writeVersions(w io.Writer, list []versionInfo) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(w, "no files")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tVERSION\tSIZE\tCREATED\tBLAKE3\tMD5\tCHUNKER")
	for _, v := range list {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", v.Path, v.Version, formatBytes(v.Size),
			v.Created.Local().Format(time.DateTime), v.BLAKE3[:16], v.MD5, v.Chunker)
	}
	return tw.Flush()
}
