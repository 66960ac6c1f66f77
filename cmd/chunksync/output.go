package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/vbauerster/mpb/v8/decor"
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
