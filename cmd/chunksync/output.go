package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/vbauerster/mpb/v8/decor"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// writeJSON writes v to w as one indented JSON document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// formatBytes gives n in binary units, like "64.0 MiB", the same way the
// progress bars show sizes.
func formatBytes(n int64) string {
	if n < 1<<10 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("% .1f", decor.SizeB1024(n))
}

// formatRate gives a throughput of n bytes in seconds, like "52.3 MiB/s".
func formatRate(n int64, seconds float64) string {
	if seconds <= 0 {
		return "-"
	}
	return formatBytes(int64(float64(n)/seconds)) + "/s"
}

// transferStats is what the reports of a push and of a pull share: the
// file as the version's manifest describes it and what moving it cost.
type transferStats struct {
	Size   int64 `json:"size"`
	Chunks int   `json:"chunks"`
	// WireBytesSent and WireBytesReceived count UDP payload, QUIC and TLS
	// included, over the Connections the client made, handshakes included.
	WireBytesSent     uint64 `json:"wire_bytes_sent"`
	WireBytesReceived uint64 `json:"wire_bytes_received"`
	Connections       int    `json:"connections"`
	// Seconds is how long the transfer took once connected; Throughput is
	// the file's size over it, in bytes per second.
	Seconds    float64 `json:"seconds"`
	Throughput float64 `json:"throughput"`
	// BLAKE3 and MD5 are the whole file's digests in hex, as verified.
	BLAKE3 string `json:"blake3"`
	MD5    string `json:"md5"`
	// Chunker is how the file was cut, with every parameter.
	Chunker string `json:"chunker"`
}

// newTransferStats describes the transfer of m that took d, with the wire
// counts of client since it was dialled.
func newTransferStats(client *transport.Client, m *engine.Manifest, d time.Duration) transferStats {
	wire := client.Stats()
	t := transferStats{
		Size:              m.Size,
		Chunks:            len(m.Chunks),
		WireBytesSent:     wire.BytesSent,
		WireBytesReceived: wire.BytesReceived,
		Connections:       wire.Connections,
		Seconds:           d.Seconds(),
		BLAKE3:            hex.EncodeToString(m.Digests.BLAKE3[:]),
		MD5:               hex.EncodeToString(m.Digests.MD5[:]),
		Chunker:           m.Chunker.String(),
	}
	if t.Seconds > 0 {
		t.Throughput = float64(m.Size) / t.Seconds
	}
	return t
}

// writeSize prints the size line of a report for people.
func (t transferStats) writeSize(w io.Writer) {
	fmt.Fprintf(w, "  size\t%s (%d bytes) in %d chunks, %s\n", formatBytes(t.Size), t.Size, t.Chunks, t.Chunker)
}

// writeCost prints the wire, time and digest lines of a report for people.
func (t transferStats) writeCost(w io.Writer) {
	fmt.Fprintf(w, "  wire\t%s sent, %s received\n", formatBytes(int64(t.WireBytesSent)), formatBytes(int64(t.WireBytesReceived)))
	fmt.Fprintf(w, "  time\t%.2f s, %s\n", t.Seconds, formatRate(t.Size, t.Seconds))
	fmt.Fprintf(w, "  blake3\t%s\n", t.BLAKE3)
	fmt.Fprintf(w, "  md5\t%s\n", t.MD5)
}
