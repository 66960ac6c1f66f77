package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/net/html"
)

// reportOut, when set, keeps the sample report and its screenshot from
// TestScreenshotOfSampleReport there, to look at:
//
//	go test -run TestScreenshotOfSampleReport ./bench/ -args -report.out=/tmp/report
var reportOut = flag.String("report.out", "", "directory to keep the sample report and its screenshot in")

// sampleReport has every kind of chart, a table and the edge cases, with
// figures of the size the benchmarks produce.
func sampleReport() Report {
	sizes := []float64{4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20}
	dedup := func(base, slope float64) []Point {
		var pts []Point
		for i, s := range sizes {
			pts = append(pts, Point{X: s, Y: base - slope*float64(i)*float64(i+1)/2})
		}
		return pts
	}
	histogram := func(peak, spread float64) []Point {
		var pts []Point
		for x := 2.0; x <= 64; x += 2 {
			d := (x - peak) / spread
			pts = append(pts, Point{X: x * 1024, Y: math.Round(900 * math.Exp(-d*d/2))})
		}
		return pts
	}
	return Report{
		Title: "Chunking strategies on linux-6.8.tar",
		Note:  "1.4 GiB, 2 cores, Go 1.26.\nchunksync bench chunkers --data linux-6.8.tar",
		Sections: []Section{
			{
				Heading: "Deduplication",
				Text:    "Content-defined chunkers find the same data again after an insertion; fixed-size chunks do not.",
				Charts: []Chart{
					{
						Kind: ChartLine, Title: "Data saved by deduplication against the previous release",
						XLabel: "average chunk size (bytes)", YLabel: "saved (%)", LogX: true,
						Series: []Series{
							{Name: "FastCDC", Points: dedup(92, 0.9)},
							{Name: "Rabin", Points: dedup(90, 1.0)},
							{Name: "BuzHash", Points: dedup(89, 1.1)},
							{Name: "Fixed size", Points: dedup(41, 0.6)},
						},
					},
					{
						Kind: ChartBar, Title: "Chunking throughput", YLabel: "MB/s",
						Series: []Series{
							{Name: "cold cache", Points: []Point{{Label: "FastCDC", Y: 1180}, {Label: "Rabin", Y: 402}, {Label: "BuzHash", Y: 890}, {Label: "Fixed size", Y: 2650}}},
							{Name: "warm cache", Points: []Point{{Label: "FastCDC", Y: 1420}, {Label: "Rabin", Y: 431}, {Label: "BuzHash", Y: 1010}, {Label: "Fixed size", Y: 3900}}},
						},
					},
					{
						Kind: ChartHistogram, Title: "Chunk sizes, 16 KiB target", XLabel: "chunk size (bytes)", YLabel: "chunks",
						Series: []Series{
							{Name: "FastCDC (normalised)", Points: histogram(16, 5)},
							{Name: "Rabin", Points: histogram(20, 11)},
						},
					},
				},
				Table: &Table{
					Columns: []string{"chunker", "avg chunk", "saved", "throughput", "notes"},
					Rows: [][]string{
						{"FastCDC", "16 KiB", "91.1%", "1,420 MB/s", "normalised chunking"},
						{"Rabin", "16 KiB", "89.0%", "431 MB/s", "restic/chunker"},
						{"BuzHash", "16 KiB", "87.9%", "1,010 MB/s", "—"},
						{"Fixed size", "16 KiB", "40.4%", "3,900 MB/s", "baseline"},
					},
				},
			},
			{
				Heading: "Transfers",
				Text:    "Push of the whole file over loopback QUIC, 50 ms RTT.",
				Charts: []Chart{
					{
						Kind: ChartLine, Title: "Throughput against parallel streams", XLabel: "streams", YLabel: "bytes/s",
						Series: []Series{
							{Name: "1 connection", Points: []Point{{X: 1, Y: 41e6}, {X: 2, Y: 78e6}, {X: 4, Y: 131e6}, {X: 8, Y: 162e6}, {X: 16, Y: 170e6}}},
							{Name: "4 connections", Points: []Point{{X: 1, Y: 39e6}, {X: 2, Y: 80e6}, {X: 4, Y: 150e6}, {X: 8, Y: 240e6}, {X: 16, Y: 290e6}}},
						},
					},
					{
						// Goodputs of links a thousand times apart, and a
						// transfer that timed out (0): a log Y axis.
						Kind: ChartBar, Title: "Goodput by link profile", YLabel: "bytes/s", LogY: true,
						Series: []Series{
							{Name: "chunksync", Points: []Point{{Label: "1gbit 1ms", Y: 112e6}, {Label: "200mbit 20ms 1%", Y: 21.5e6}, {Label: "10mbit 80ms", Y: 1.12e6}, {Label: "1mbit 300ms 5%", Y: 96e3}}},
							{Name: "rsync", Points: []Point{{Label: "1gbit 1ms", Y: 98e6}, {Label: "200mbit 20ms 1%", Y: 6.1e6}, {Label: "10mbit 80ms", Y: 0.93e6}, {Label: "1mbit 300ms 5%", Y: 0}}},
						},
					},
				},
				Table: wideTable(),
			},
			{
				Heading: "Edge cases",
				Text:    "What the charts do with data they cannot draw.",
				Charts: []Chart{
					{
						Kind: ChartLine, Title: "Log axis with zero, negative and NaN X", LogX: true, XLabel: "rate (bytes/s)",
						Series: []Series{{Name: "link", Points: []Point{{X: 0, Y: 1}, {X: -5, Y: 2}, {X: math.NaN(), Y: 3}, {X: 10e6, Y: 4}, {X: 100e6, Y: 6}, {X: 1e9, Y: 5}}}},
					},
					{
						Kind: ChartBar, Title: "Long categories, one series, all equal",
						Series: []Series{{Points: []Point{
							{Label: "FIXED-1M with a name much longer than anything that fits under a bar", Y: 7},
							{Label: "DYNAMIC-1M-BUZHASH", Y: 7}, {Label: "DYNAMIC-4M-BUZHASH", Y: 7}, {Label: "DYNAMIC-8M-RABIN", Y: 7},
							{Label: "DYNAMIC-16M-FASTCDC", Y: 7}, {Label: "DYNAMIC-32M-FASTCDC", Y: 7},
						}}},
					},
					{Kind: ChartHistogram, Title: "Nothing but NaN", Series: []Series{{Name: "empty", Points: []Point{{X: math.NaN(), Y: 1}}}}},
				},
			},
		},
	}
}

// wideTable is a transfer benchmark's table: more columns than the page
// is wide, names and link profiles that must not break, and one long note.
func wideTable() *Table {
	t := &Table{Columns: []string{"tool", "profile", "chunker", "avg chunk", "file", "size", "changed", "sent", "received", "time", "goodput", "saved", "result"}}
	for _, tool := range []string{"chunksync", "rsync"} {
		for _, profile := range []string{"1gbit 1ms", "200mbit 20ms 1%", "1mbit 300ms 5%"} {
			result := "ok"
			if tool == "rsync" && profile == "1mbit 300ms 5%" {
				result = "incomplete: timed out after 2m0s"
			}
			t.Rows = append(t.Rows, []string{tool, profile, "fastcdc", "64 KiB", "linux-6.8.tar", "1.4 GiB", "0.8%", "12.1 MiB", "88 KiB", "4.2s", "21.5 MB/s", "99.2%", result})
		}
	}
	t.Rows[0][12] = "ok; the first push after an empty store, so every chunk went over the link and none came from a previous release"
	return t
}

func TestReportHTMLIsWellFormed(t *testing.T) {
	page := render(t, sampleReport())
	checkWellFormed(t, page)
	doc := parse(t, page)
	if got := len(findAll(doc, "figure", "")); got != 8 {
		t.Errorf("%d figures, want 8", got)
	}
	if got := len(findAll(doc, "table", "")); got != 2 {
		t.Errorf("%d tables, want 2", got)
	}
	// Self-contained: nothing is fetched, nothing runs.
	for _, tag := range []string{"script", "link", "img", "iframe", "object"} {
		if n := findAll(doc, tag, ""); len(n) > 0 {
			t.Errorf("the page has a <%s>", tag)
		}
	}
	for _, s := range []string{"src=", "url(", "@import", "http://", "https://"} {
		if i := strings.Index(strings.ReplaceAll(page, `xmlns="http://www.w3.org/2000/svg"`, ""), s); i >= 0 {
			t.Errorf("the page refers outside itself: %q at %d", s, i)
		}
	}
}

func TestReportIsDeterministic(t *testing.T) {
	if a, b := render(t, sampleReport()), render(t, sampleReport()); a != b {
		t.Error("two renderings of one report differ")
	}
}

// TestReportEscapesText puts markup in every text of a report: none of it
// may become an element.
func TestReportEscapesText(t *testing.T) {
	const evil = `<script>alert("x")</script><b onmouseover=x>&amp;`
	r := Report{
		Title: evil, Note: evil,
		Sections: []Section{{
			Heading: evil, Text: evil,
			Charts: []Chart{
				{Kind: ChartLine, Title: evil, XLabel: evil, YLabel: evil, Series: []Series{{Name: evil, Points: []Point{{X: 1, Y: 2}, {X: 2, Y: 3}}}, {Name: "b", Points: []Point{{X: 1, Y: 1}}}}},
				{Kind: ChartBar, Title: evil, Series: []Series{{Name: evil, Points: []Point{{Label: evil, Y: 1}}}, {Name: "b", Points: []Point{{Label: "x", Y: 2}}}}},
				{Kind: ChartHistogram, Title: evil, Series: []Series{{Name: evil, Points: []Point{{X: 1, Y: 1}}}, {Name: "b"}}},
			},
			Table: &Table{Columns: []string{evil}, Rows: [][]string{{evil}}},
		}},
		// Three sections make a table of contents, which repeats headings.
	}
	r.Sections = append(r.Sections, Section{Heading: evil}, Section{Heading: evil})
	page := render(t, r)
	checkWellFormed(t, page)
	if strings.Contains(page, "<script") || strings.Contains(page, "<b ") {
		t.Error("markup from the report's text reached the page unescaped")
	}
	if !strings.Contains(page, "&lt;script&gt;") {
		t.Error("the escaped title is not on the page")
	}
	doc := parse(t, page)
	for _, tag := range []string{"script", "b"} {
		if n := findAll(doc, tag, ""); len(n) > 0 {
			t.Errorf("the page has %d <%s> elements", len(n), tag)
		}
	}
	// The text itself survives, as text.
	if h1 := findAll(doc, "h1", ""); len(h1) != 1 || text(h1[0]) != evil {
		t.Errorf("h1 reads %q, want the title", text(h1[0]))
	}
}

// TestReportChartElements counts what each kind of chart draws for a known
// input.
func TestReportChartElements(t *testing.T) {
	cats := []string{"FastCDC", "Rabin", "BuzHash", "Fixed"}
	barSeries := func(m int) []Series {
		var ss []Series
		for i := range m {
			s := Series{Name: "run " + strconv.Itoa(i)}
			for j, c := range cats {
				s.Points = append(s.Points, Point{Label: c, Y: float64(10*i + j + 1)})
			}
			ss = append(ss, s)
		}
		return ss
	}
	lineSeries := func(m, n int) []Series {
		var ss []Series
		for i := range m {
			s := Series{Name: "s" + strconv.Itoa(i)}
			for j := range n {
				s.Points = append(s.Points, Point{X: float64(int(1) << (12 + j)), Y: float64(i + j)})
			}
			ss = append(ss, s)
		}
		return ss
	}
	tests := []struct {
		name  string
		chart Chart
		want  map[string]int // "tag.class" → count
	}{
		{"line 3×5", Chart{Kind: ChartLine, LogX: true, Series: lineSeries(3, 5)},
			map[string]int{"path.line": 3, "path.marker": 15, "ul.legend li": 3, "rect.bar": 0}},
		{"line one point", Chart{Kind: ChartLine, Series: lineSeries(1, 1)},
			map[string]int{"path.line": 1, "path.marker": 1}},
		{"line 9 series", Chart{Kind: ChartLine, Series: lineSeries(9, 2)},
			map[string]int{"path.line": 9, "path.marker": 18, "ul.legend li": 9}},
		{"bar 4×1", Chart{Kind: ChartBar, Series: barSeries(1)},
			map[string]int{"rect.bar": 4, "text.value": 4, "ul.legend li": 1}},
		{"bar 4×3", Chart{Kind: ChartBar, Series: barSeries(3)},
			map[string]int{"rect.bar": 12, "path.line": 0}},
		{"bar 4×7", Chart{Kind: ChartBar, Series: barSeries(7)},
			map[string]int{"rect.bar": 28, "text.value": 0}},
		{"histogram 2×6", Chart{Kind: ChartHistogram, Series: lineSeries(2, 6)},
			map[string]int{"rect.bin": 12, "path.outline": 2, "path.marker": 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := renderChart(t, tt.chart)
			for sel, want := range tt.want {
				if got := count(doc, sel); got != want {
					t.Errorf("%d %s, want %d", got, sel, want)
				}
			}
			if notes := findAll(doc, "ul", "notes"); len(notes) > 0 {
				t.Errorf("unexpected notes: %q", text(notes[0]))
			}
		})
	}

	t.Run("bar categories in first-seen order", func(t *testing.T) {
		doc := renderChart(t, Chart{Kind: ChartBar, Series: []Series{
			{Name: "a", Points: []Point{{Label: "z", Y: 1}, {Label: "y", Y: 2}}},
			{Name: "b", Points: []Point{{Label: "x", Y: 3}, {Label: "z", Y: 4}}},
		}})
		if got := tickTexts(doc); !slices.Equal(got, []string{"z", "y", "x"}) {
			t.Errorf("categories %q, want z y x", got)
		}
		// Two series, three categories, four values: four bars, and b's z
		// beside a's, in z's group.
		bars := findAll(doc, "rect", "bar")
		if len(bars) != 4 {
			t.Fatalf("%d bars, want 4", len(bars))
		}
		az, bz, by := attrFloat(t, bars[0], "x"), attrFloat(t, bars[3], "x"), attrFloat(t, bars[1], "x")
		if !(az < bz && bz < by) {
			t.Errorf("bars of z at %v and %v, of y at %v: want z's side by side, before y", az, bz, by)
		}
	})

	t.Run("tooltips carry exact values", func(t *testing.T) {
		doc := renderChart(t, Chart{Kind: ChartLine, LogX: true, XLabel: "chunk size", YLabel: "MB/s",
			Series: []Series{{Name: "FastCDC", Points: []Point{{X: 65536, Y: 1234.5678}, {X: 1 << 20, Y: 2}}}}})
		marks := findAll(doc, "path", "marker")
		tip := text(marks[0])
		for _, want := range []string{"FastCDC", "chunk size: 65536 (64K)", "MB/s: 1234.5678 (1235)"} {
			if !strings.Contains(tip, want) {
				t.Errorf("tooltip %q lacks %q", tip, want)
			}
		}
	})
}

func TestReportLogAxisTicks(t *testing.T) {
	tests := []struct {
		name   string
		xs     []float64
		labels []string
	}{
		{"chunk sizes", []float64{8 << 10, 16 << 10, 32 << 10, 64 << 10}, []string{"8K", "16K", "32K", "64K"}},
		{"chunk sizes, thinned", []float64{1 << 10, 1 << 24}, []string{"1K", "4K", "16K", "64K", "256K", "1M", "4M", "16M"}},
		{"binary, not powers", []float64{48 << 10, 3 << 20}, []string{"32K", "64K", "128K", "256K", "512K", "1M", "2M", "4M"}},
		{"small binary", []float64{1, 512}, []string{"1", "2", "4", "8", "16", "32", "64", "128", "256", "512"}},
		{"binary, thinned to ten", []float64{1, 1024}, []string{"1", "4", "16", "64", "256", "1K"}},
		{"rates over decades", []float64{2e6, 3e9}, []string{"1M", "10M", "100M", "1G", "10G"}},
		{"rates within two decades", []float64{12e6, 700e6}, []string{"10M", "20M", "50M", "100M", "200M", "500M", "1G"}},
		{"rates within an octave", []float64{11e6, 19e6}, []string{"10M", "12M", "14M", "16M", "18M", "20M"}},
		{"one rate", []float64{1e6}, []string{"100K", "1M", "10M"}},
		{"one chunk size", []float64{64 << 10}, []string{"32K", "64K", "128K"}},
		{"fractions", []float64{0.001, 0.5}, []string{"0.001", "0.01", "0.1", "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pts []Point
			for i, x := range tt.xs {
				pts = append(pts, Point{X: x, Y: float64(i)})
			}
			doc := renderChart(t, Chart{Kind: ChartLine, LogX: true, Series: []Series{{Points: pts}}})
			if got := tickTexts(doc); !slices.Equal(got, tt.labels) {
				t.Errorf("X ticks %q, want %q", got, tt.labels)
			}
			// A tick's place is linear in the logarithm of its value.
			a := logAxis(slices.Min(tt.xs), slices.Max(tt.xs), isBinary(tt.xs))
			pos := tickPositions(t, doc)
			if len(pos) != len(a.ticks) || len(pos) < 2 {
				t.Fatalf("%d tick positions for %d ticks", len(pos), len(a.ticks))
			}
			unit := (pos[len(pos)-1] - pos[0]) / math.Log(a.ticks[len(pos)-1].v/a.ticks[0].v)
			for i, p := range pos {
				if want := pos[0] + unit*math.Log(a.ticks[i].v/a.ticks[0].v); math.Abs(p-want) > 0.15 {
					t.Errorf("tick %s at x=%.1f, want %.1f", a.ticks[i].label, p, want)
				}
			}
		})
	}
}

// TestReportLogYTicks checks the log Y axis: ticks at powers of ten or of
// two, placed linearly in the logarithm; bars and bins reach one step below
// their smallest value, so that it keeps a height.
func TestReportLogYTicks(t *testing.T) {
	tests := []struct {
		name   string
		kind   ChartKind
		ys     []float64
		labels []string
	}{
		{"goodputs over decades", ChartLine, []float64{96e3, 21.5e6, 112e6}, []string{"10K", "100K", "1M", "10M", "100M", "1G"}},
		{"byte counts", ChartLine, []float64{4 << 10, 64 << 10, 1 << 20}, []string{"4K", "8K", "16K", "32K", "64K", "128K", "256K", "512K", "1M"}},
		{"within two decades", ChartLine, []float64{12e6, 700e6}, []string{"10M", "20M", "50M", "100M", "200M", "500M", "1G"}},
		{"bars on a decade", ChartBar, []float64{1e6, 30e6, 1e9}, []string{"100K", "1M", "10M", "100M", "1G"}},
		{"bars between decades", ChartBar, []float64{2e6, 3e9}, []string{"1M", "10M", "100M", "1G", "10G"}},
		{"bins", ChartHistogram, []float64{1, 40, 900}, []string{"0.1", "1", "10", "100", "1K"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pts []Point
			for i, y := range tt.ys {
				pts = append(pts, Point{X: float64(i + 1), Y: y, Label: strconv.Itoa(i)})
			}
			v := newChartView(Chart{Kind: tt.kind, LogY: true, Series: []Series{{Points: pts}}})
			if len(v.Notes) > 0 {
				t.Errorf("unexpected notes %q", v.Notes)
			}
			var got []string
			var pos []float64
			for _, tk := range v.YTicks {
				got = append(got, tk.Text)
				pos = append(pos, tk.Mark.Y1)
			}
			if !slices.Equal(got, tt.labels) {
				t.Fatalf("Y ticks %q, want %q", got, tt.labels)
			}
			// The lowest tick is the axis's bottom, the highest its top, and
			// those between are placed by their logarithm.
			vals := tickValues(t, tt.labels)
			bottom, top := v.Plot.Y+v.Plot.H, v.Plot.Y
			if math.Abs(pos[0]-bottom) > 0.01 || math.Abs(pos[len(pos)-1]-top) > 0.01 {
				t.Errorf("ticks from y=%.1f to %.1f, plot from %.1f to %.1f", pos[0], pos[len(pos)-1], bottom, top)
			}
			span := math.Log(vals[len(vals)-1] / vals[0])
			for i, p := range pos {
				if want := bottom - v.Plot.H*math.Log(vals[i]/vals[0])/span; math.Abs(p-want) > 0.01 {
					t.Errorf("tick %s at y=%.2f, want %.2f", tt.labels[i], p, want)
				}
			}
		})
	}
}

// tickValues reads tick labels back as numbers: "100K", "1M", "4K" (a
// binary axis's K is 1024, told by the labels being powers of two).
func tickValues(t *testing.T, labels []string) []float64 {
	t.Helper()
	binary := slices.Contains(labels, "8K") || slices.Contains(labels, "128K")
	var out []float64
	for _, l := range labels {
		scale := 1.0
		for _, u := range []struct {
			suffix            string
			decimal, binaryOf float64
		}{{"K", 1e3, 1 << 10}, {"M", 1e6, 1 << 20}, {"G", 1e9, 1 << 30}} {
			if strings.HasSuffix(l, u.suffix) {
				l, scale = strings.TrimSuffix(l, u.suffix), u.decimal
				if binary {
					scale = u.binaryOf
				}
			}
		}
		f, err := strconv.ParseFloat(l, 64)
		if err != nil {
			t.Fatalf("tick label %q: %v", l, err)
		}
		out = append(out, f*scale)
	}
	return out
}

// TestReportLogYBars checks that the bars of a log Y chart stand on the
// axis's bottom, with heights in proportion to the logarithm of their
// value over it, and carry their values.
func TestReportLogYBars(t *testing.T) {
	values := []float64{3e6, 45e6, 800e6, 2e9}
	var pts []Point
	for i, y := range values {
		pts = append(pts, Point{Label: "profile " + strconv.Itoa(i), Y: y})
	}
	doc := renderChart(t, Chart{Kind: ChartBar, LogY: true, YLabel: "bytes/s", Series: []Series{{Name: "chunksync", Points: pts}}})
	v := newChartView(Chart{Kind: ChartBar, LogY: true, YLabel: "bytes/s", Series: []Series{{Name: "chunksync", Points: pts}}})
	if got := v.YTicks[0].Text; got != "1M" {
		t.Fatalf("lowest Y tick %q, want 1M", got)
	}
	const lo, hi = 1e6, 1e10 // the axis's ends, 1M to 10G
	bottom := v.Plot.Y + v.Plot.H
	bars := findAll(doc, "rect", "bar")
	if len(bars) != len(values) {
		t.Fatalf("%d bars, want %d", len(bars), len(values))
	}
	for i, r := range bars {
		y, h := attrFloat(t, r, "y"), attrFloat(t, r, "height")
		if math.Abs(y+h-bottom) > 0.15 {
			t.Errorf("bar %d ends at y=%.1f, the axis at %.1f", i, y+h, bottom)
		}
		if want := v.Plot.H * math.Log(values[i]/lo) / math.Log(hi/lo); math.Abs(h-want) > 0.15 {
			t.Errorf("bar of %g is %.1f high, want %.1f", values[i], h, want)
		}
	}
	var labels []string
	for _, tx := range findAll(doc, "text", "value") {
		labels = append(labels, text(tx))
	}
	if want := []string{"3M", "45M", "800M", "2G"}; !slices.Equal(labels, want) {
		t.Errorf("values over the bars %q, want %q", labels, want)
	}
	if tip := text(bars[1]); !strings.Contains(tip, "bytes/s: 45000000 (45M)") {
		t.Errorf("tooltip %q lacks the exact value", tip)
	}
}

// TestReportLogYLeavesOutNonPositive gives a log Y chart values ≤ 0: they
// are left out with a note, the bars and bins around them keep their
// places, and no coordinate is NaN.
func TestReportLogYLeavesOutNonPositive(t *testing.T) {
	const note = "2 points left out: Y ≤ 0 has no place on a log axis."
	t.Run("bars", func(t *testing.T) {
		c := Chart{Kind: ChartBar, LogY: true, Series: []Series{
			{Name: "chunksync", Points: []Point{{Label: "fast", Y: 100e6}, {Label: "slow", Y: 0}, {Label: "lossy", Y: 2e6}}},
			{Name: "rsync", Points: []Point{{Label: "fast", Y: 90e6}, {Label: "slow", Y: -1}, {Label: "lossy", Y: 1e6}}},
		}}
		doc := renderChart(t, c) // checks for NaN and Inf coordinates
		if got := text(findAll(doc, "ul", "notes")[0]); got != note {
			t.Errorf("notes %q, want %q", got, note)
		}
		if got := len(findAll(doc, "rect", "bar")); got != 4 {
			t.Errorf("%d bars, want 4", got)
		}
		// The category of the bars left out keeps its place, empty.
		if got := tickTexts(doc); !slices.Equal(got, []string{"fast", "slow", "lossy"}) {
			t.Errorf("categories %q, want fast slow lossy", got)
		}
	})
	t.Run("lines", func(t *testing.T) {
		c := Chart{Kind: ChartLine, LogY: true, Series: []Series{{Points: []Point{{X: 1, Y: 0}, {X: 2, Y: 10}, {X: 3, Y: -4}, {X: 4, Y: 1000}}}}}
		doc := renderChart(t, c)
		if got := text(findAll(doc, "ul", "notes")[0]); got != note {
			t.Errorf("notes %q, want %q", got, note)
		}
		if got := len(findAll(doc, "path", "marker")); got != 2 {
			t.Errorf("%d markers, want 2", got)
		}
	})
	t.Run("bins", func(t *testing.T) {
		c := Chart{Kind: ChartHistogram, LogY: true, Series: []Series{{Points: []Point{{X: 0, Y: 3}, {X: 10, Y: 0}, {X: 20, Y: 800}, {X: 30, Y: 0}, {X: 40, Y: 12}}}}}
		doc := renderChart(t, c)
		if got := text(findAll(doc, "ul", "notes")[0]); got != note {
			t.Errorf("notes %q, want %q", got, note)
		}
		bins := findAll(doc, "rect", "bin")
		if len(bins) != 3 {
			t.Fatalf("%d bins, want 3", len(bins))
		}
		// Each bin keeps its own width: none stretches over an empty one.
		w := attrFloat(t, bins[0], "width")
		for i, b := range bins {
			if got := attrFloat(t, b, "width"); math.Abs(got-w) > 0.15 {
				t.Errorf("bin %d is %.1f wide, the first %.1f", i, got, w)
			}
		}
		// The outline drops to the axis at each gap: three pieces.
		if d := attr(findAll(doc, "path", "outline")[0], "d"); strings.Count(d, "M") != 3 {
			t.Errorf("outline %q, want three pieces", d)
		}
	})
}

// TestReportXAxisEndsAtTheData checks the linear X axes: they end at the
// first and last point, byte counts step in powers of two.
func TestReportXAxisEndsAtTheData(t *testing.T) {
	odd := []Point{{X: 1, Y: 1}, {X: 5, Y: 3}, {X: 15, Y: 2}}
	var bins []Point
	for x := 2 << 10; x <= 64<<10; x += 2 << 10 {
		bins = append(bins, Point{X: float64(x), Y: 1})
	}
	tests := []struct {
		name  string
		chart Chart
		ticks []string
	}{
		{"counts", Chart{Kind: ChartLine, Series: []Series{{Points: odd}}}, []string{"2", "4", "6", "8", "10", "12", "14"}},
		{"powers of two", Chart{Kind: ChartLine, Series: []Series{{Points: []Point{{X: 1, Y: 1}, {X: 4, Y: 1}, {X: 16, Y: 2}}}}}, []string{"2", "4", "6", "8", "10", "12", "14", "16"}},
		{"chunk-size bins", Chart{Kind: ChartHistogram, Series: []Series{{Points: bins}}}, []string{"8K", "16K", "24K", "32K", "40K", "48K", "56K", "64K"}},
		{"sub-KiB bins", Chart{Kind: ChartHistogram, Series: []Series{{Points: []Point{{X: 0, Y: 1}, {X: 512, Y: 2}, {X: 1024, Y: 1}}}}}, []string{"0", "0.25K", "0.5K", "0.75K", "1K", "1.25K", "1.5K"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := renderChart(t, tt.chart)
			if got := tickTexts(doc); !slices.Equal(got, tt.ticks) {
				t.Errorf("X ticks %q, want %q", got, tt.ticks)
			}
		})
	}
	// The first point stands just off the Y axis, the last just short of
	// the plot's right edge.
	v := newChartView(Chart{Kind: ChartLine, Series: []Series{{Points: odd}}})
	first, last := v.Series[0].Markers[0].D, v.Series[0].Markers[2].D
	if x := markerX(t, first); math.Abs(x-(v.Plot.X+10)) > 0.1 {
		t.Errorf("first point at x=%.1f, plot starts at %.1f", x, v.Plot.X)
	}
	if x := markerX(t, last); math.Abs(x-(v.PlotRight()-10)) > 0.1 {
		t.Errorf("last point at x=%.1f, plot ends at %.1f", x, v.PlotRight())
	}
}

// markerX is the centre of a circle marker, from its path "Mx y a…".
func markerX(t *testing.T, d string) float64 {
	t.Helper()
	var x, y, r float64
	if _, err := fmt.Sscanf(d, "M%g %ga%g", &x, &y, &r); err != nil {
		t.Fatalf("marker %q: %v", d, err)
	}
	return x + r
}

func TestReportTurnedLabelsStayOnTheChart(t *testing.T) {
	var pts []Point
	for i := range 8 {
		pts = append(pts, Point{Label: strings.Repeat("DYNAMIC-BUZHASH-", i+1), Y: float64(i)})
	}
	v := newChartView(Chart{Kind: ChartBar, YLabel: "MB/s", Series: []Series{{Points: pts}}})
	slant := rotatedLabelDeg * math.Pi / 180
	for _, tk := range v.XTicks {
		if !tk.Rotate {
			t.Fatalf("label %q stands level among long ones", tk.Text)
		}
		if tk.Full == "" && utf8.RuneCountInString(tk.Text) > 24 {
			t.Errorf("label %q is not cut", tk.Text)
		}
		reach := float64(utf8.RuneCountInString(tk.Text)) * charWidth
		if left := tk.X - reach*math.Cos(slant); left < 0 {
			t.Errorf("label %q reaches x=%.1f, off the chart", tk.Text, left)
		}
		if bottom := tk.Y + reach*math.Sin(slant); bottom > float64(v.H) {
			t.Errorf("label %q reaches y=%.1f, below the chart's %d", tk.Text, bottom, v.H)
		}
	}
}

func TestReportLinearAxisTicks(t *testing.T) {
	tests := []struct {
		lo, hi float64
		zero   bool
		want   []string
	}{
		{0, 97, false, []string{"0", "20", "40", "60", "80", "100"}},
		{41e6, 290e6, true, []string{"0", "100M", "200M", "300M"}},
		{0.91, 0.95, false, []string{"0.91", "0.92", "0.93", "0.94", "0.95"}},
		{-3, 7, false, []string{"-4", "-2", "0", "2", "4", "6", "8"}},
		{5, 5, false, []string{"2", "3", "4", "5", "6", "7", "8"}},
		{0, 0, true, []string{"0", "0.2", "0.4", "0.6", "0.8", "1"}},
		{1000, 1500, false, []string{"1000", "1100", "1200", "1300", "1400", "1500"}},
		{0, 2e6, false, []string{"0", "0.5M", "1M", "1.5M", "2M"}},
	}
	for _, tt := range tests {
		a := linearAxis(tt.lo, tt.hi, 5, tt.zero, false)
		var got []string
		for _, tk := range a.ticks {
			got = append(got, tk.label)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("linearAxis(%v, %v, zero %v) ticks %q, want %q", tt.lo, tt.hi, tt.zero, got, tt.want)
		}
		if a.lo > tt.lo || a.hi < tt.hi {
			t.Errorf("linearAxis(%v, %v) covers only [%v, %v]", tt.lo, tt.hi, a.lo, a.hi)
		}
	}
}

// TestReportEdgeCases draws every kind of chart from data it cannot draw
// as it is: no panic, a well-formed page, and a note that says what
// happened.
func TestReportEdgeCases(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	long := strings.Repeat("a very long label ", 12)
	pts := func(xys ...float64) []Point {
		var out []Point
		for i := 0; i+1 < len(xys); i += 2 {
			out = append(out, Point{X: xys[i], Y: xys[i+1], Label: string(rune('a' + i/2))})
		}
		return out
	}
	tests := []struct {
		name   string
		series []Series
		logX   bool
		logY   bool
		// The notes each kind must show (a part of them), "" for none;
		// empty lists the kinds (L, B, H) that have nothing to draw.
		line, bar, hist string
		empty           string
	}{
		{name: "no series", empty: "LBH"},
		{name: "empty series", series: []Series{{Name: "nothing"}},
			line: `Series "nothing" has no points`, bar: `Series "nothing" has no points`, hist: `Series "nothing" has no points`, empty: "LBH"},
		{name: "one empty of two", series: []Series{{Name: "a", Points: pts(1, 1)}, {Name: "b"}},
			line: `Series "b" has no points`, bar: `Series "b" has no points`, hist: `Series "b" has no points`},
		{name: "one point", series: []Series{{Points: pts(3, 4)}}},
		{name: "all equal", series: []Series{{Points: pts(2, 5, 2, 5, 2, 5)}}, hist: "2 bins left out"},
		{name: "all zero", series: []Series{{Points: pts(0, 0, 0, 0)}}, hist: "1 bin left out"},
		{name: "NaN and Inf", series: []Series{{Points: pts(nan, 1, 1, inf, 2, nan, 3, 3)}},
			line: "3 points left out: not finite", bar: "2 points left out: not finite", hist: "3 points left out: not finite"},
		{name: "only NaN", series: []Series{{Name: "n", Points: pts(nan, nan)}},
			line: "1 point left out", bar: "1 point left out", hist: "1 point left out", empty: "LBH"},
		{name: "log axis, zero and negative X", series: []Series{{Points: pts(0, 1, -1, 2, 1024, 3)}}, logX: true,
			line: "2 points left out: X ≤ 0 has no place on a log axis", hist: "2 points left out: X ≤ 0"},
		{name: "log axis, only zero X", series: []Series{{Name: "z", Points: pts(0, 1)}}, logX: true,
			line: "1 point left out: X ≤ 0", hist: "1 point left out: X ≤ 0", empty: "LH"},
		{name: "log Y axis, zero and negative Y", series: []Series{{Points: pts(1, 0, 2, -1, 3, 10, 4, 1000)}}, logY: true,
			line: "2 points left out: Y ≤ 0 has no place on a log axis", bar: "2 points left out: Y ≤ 0 has no place on a log axis", hist: "2 points left out: Y ≤ 0 has no place on a log axis"},
		{name: "log Y axis, only zero Y", series: []Series{{Name: "z", Points: pts(1, 0)}}, logY: true,
			line: "1 point left out: Y ≤ 0", bar: "1 point left out: Y ≤ 0", hist: "1 point left out: Y ≤ 0", empty: "LBH"},
		{name: "log axes, X and Y ≤ 0", series: []Series{{Points: pts(0, 1, 1, 0, 2, 2, 4, 8)}}, logX: true, logY: true,
			line: "1 point left out: Y ≤ 0", bar: "1 point left out: Y ≤ 0", hist: "1 point left out: Y ≤ 0"},
		{name: "negative Y", series: []Series{{Points: pts(1, -5, 2, 3)}}},
		{name: "extreme values", series: []Series{{Points: pts(-math.MaxFloat64, math.MaxFloat64, math.MaxFloat64, -math.MaxFloat64, 5e-324, 5e-324)}}},
		{name: "extreme values, log", series: []Series{{Points: pts(5e-324, 1, math.MaxFloat64, 2)}}, logX: true},
		{name: "extreme values, log Y", series: []Series{{Points: pts(1, 5e-324, 2, math.MaxFloat64, 3, 1)}}, logY: true},
		{name: "one value, log Y", series: []Series{{Points: pts(1, 1000)}}, logY: true},
		{name: "long labels", series: []Series{
			{Name: long, Points: []Point{{X: 1, Y: 1, Label: long}, {X: 2, Y: 2, Label: long + "2"}}},
			{Name: "b", Points: []Point{{X: 1, Y: 1, Label: long}}}}},
		{name: "repeated category", series: []Series{{Points: []Point{{X: 1, Y: 1, Label: "x"}, {X: 2, Y: 2, Label: "x"}}}},
			bar: "1 category repeated within a series"},
		{name: "ties and disorder", series: []Series{{Points: pts(3, 1, 1, 2, 1, 3)}}, hist: "1 bin left out"},
	}
	kinds := []struct {
		kind   ChartKind
		letter string
	}{{ChartLine, "L"}, {ChartBar, "B"}, {ChartHistogram, "H"}, {ChartKind(9), "L"}}
	for _, tt := range tests {
		for _, k := range kinds {
			t.Run(fmt.Sprintf("%s/kind %d", tt.name, k.kind), func(t *testing.T) {
				c := Chart{Kind: k.kind, Title: tt.name, XLabel: long, YLabel: long, LogX: tt.logX, LogY: tt.logY, Series: tt.series}
				page := render(t, Report{Title: tt.name, Sections: []Section{{Charts: []Chart{c}}}})
				checkWellFormed(t, page)
				doc := parse(t, page)
				notes := ""
				if n := findAll(doc, "ul", "notes"); len(n) > 0 {
					notes = text(n[0])
				}
				want := map[string]string{"L": tt.line, "B": tt.bar, "H": tt.hist}[k.letter]
				if k.kind == ChartKind(9) && !strings.Contains(notes, "Unknown chart kind 9: drawn as lines.") {
					t.Errorf("notes %q do not name the unknown kind", notes)
				}
				notes = strings.ReplaceAll(notes, "Unknown chart kind 9: drawn as lines.", "")
				if want == "" && notes != "" {
					t.Errorf("unexpected notes %q", notes)
				}
				if !strings.Contains(notes, want) {
					t.Errorf("notes %q, want one with %q", notes, want)
				}
				empty := strings.Contains(tt.empty, k.letter)
				if got := strings.Contains(page, ">No data</text>"); got != empty {
					t.Errorf("shows No data: %v, want %v", got, empty)
				}
				// Cut labels keep their whole text in a tooltip.
				if !empty && (!strings.Contains(page, "…") || !strings.Contains(page, "<title>"+strings.TrimSpace(long))) {
					t.Error("the long axis title is neither cut nor in full in a tooltip")
				}
			})
		}
	}
}

func TestReportTableNumericColumns(t *testing.T) {
	tv := newTableView(Table{
		Columns: []string{"chunker", "size", "ratio", "rate", "when", "mixed"},
		Rows: [][]string{
			{"FastCDC", "64 KiB", "91.1%", "52.3 MiB/s", "2024-05-01", "12"},
			{"Rabin", "1,048,576", "1.2x", "—", "2024-05-02", "n/a"},
			{"FIXED-1M", "-3", "0.5", "1e6", "yesterday", "fast"},
			{"short row"},
		},
	})
	want := []bool{false, true, true, true, false, false}
	for c, col := range tv.Columns {
		if col.Num != want[c] {
			t.Errorf("column %q numeric = %v, want %v", col.Text, col.Num, want[c])
		}
	}
	if len(tv.Rows[3]) != len(tv.Columns) {
		t.Errorf("a short row has %d cells, want %d", len(tv.Rows[3]), len(tv.Columns))
	}
	doc := parse(t, render(t, Report{Sections: []Section{{Table: &Table{Columns: []string{"a", "b"}, Rows: [][]string{{"x", "1"}, {"y", "2", "extra"}}}}}}))
	if got := count(doc, "td.num"); got != 2 {
		t.Errorf("%d right-aligned cells, want 2", got)
	}
	if got := count(doc, "th"); got != 3 {
		t.Errorf("%d column headings, want 3 (one for the extra cell)", got)
	}
}

// TestReportTableCellsDoNotBreakWords checks that cells keep to one line,
// a wide table scrolling instead, and that only long text may wrap.
func TestReportTableCellsDoNotBreakWords(t *testing.T) {
	page := render(t, Report{Sections: []Section{{Table: wideTable()}}})
	doc := parse(t, page)
	var wrapped []string
	for _, td := range findAll(doc, "td", "wrap") {
		wrapped = append(wrapped, text(td))
	}
	if want := []string{wideTable().Rows[0][12]}; !slices.Equal(wrapped, want) {
		t.Errorf("cells that may wrap: %q, want only %q", wrapped, want)
	}
	style := text(findAll(doc, "style", "")[0])
	for sel, want := range map[string]string{
		"th, td":      "white-space: nowrap",
		"td.wrap":     "white-space: normal",
		".table-wrap": "overflow-x: auto",
	} {
		rule := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sel) + ` \{([^}]*)\}`).FindStringSubmatch(style)
		if rule == nil {
			t.Errorf("the stylesheet has no rule for %s", sel)
			continue
		}
		if !strings.Contains(rule[1], want) {
			t.Errorf("%s {%s}, want %s", sel, rule[1], want)
		}
		if strings.Contains(rule[1], "overflow-wrap: anywhere") || strings.Contains(rule[1], "word-break") {
			t.Errorf("%s {%s} breaks words", sel, rule[1])
		}
	}
}

func TestWriteReport(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "reports", "run1")
	path, err := WriteReport(dir, sampleReport())
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, "index.html") {
		t.Errorf("path %s, want index.html in %s", path, dir)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("<!DOCTYPE html>")) {
		t.Errorf("the page starts %q", b[:min(len(b), 40)])
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files in the report directory, want only index.html", len(entries))
	}
	// Again, over the first.
	if _, err := WriteReport(dir, Report{Title: "second"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Contains(b, []byte("<h1>second</h1>")) {
		t.Error("the second report did not replace the first")
	}
	// A file where the directory should be.
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := WriteReport(filepath.Join(file, "sub"), Report{}); err == nil {
		t.Error("WriteReport under a regular file succeeded")
	}
}

// FuzzReportChart draws charts of arbitrary numbers: no panic, and SVG
// that parses.
func FuzzReportChart(f *testing.F) {
	floats := func(vs ...float64) []byte {
		var b []byte
		for _, v := range vs {
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
		}
		return b
	}
	f.Add(uint8(0), true, false, floats(1024, 1, 2048, 2, 0, 3, -1, 4))
	f.Add(uint8(1), false, false, floats(math.NaN(), 1, math.Inf(-1), 2, 3, math.Inf(1)))
	f.Add(uint8(2), true, false, floats(5e-324, 1, math.MaxFloat64, 2, 1, 1, 1, 1))
	f.Add(uint8(2), false, false, floats(1, 1e308, 2, -1e308, 3, 0))
	f.Add(uint8(0), false, false, floats(7, 7, 7, 7))
	f.Add(uint8(5), false, false, []byte{1, 2, 3})
	f.Add(uint8(0), false, true, floats(1, 41e6, 2, 0, 3, 2e9, 4, -1))
	f.Add(uint8(1), false, true, floats(1, 1000, 2, 5e-324, 3, math.MaxFloat64, 4, 0))
	f.Add(uint8(2), true, true, floats(1024, 5, 2048, 0, 4096, 900, 8192, 1))
	f.Fuzz(func(t *testing.T, kind uint8, logX, logY bool, data []byte) {
		c := Chart{Kind: ChartKind(kind % 4), LogX: logX, LogY: logY, Title: "fuzz", XLabel: "x", YLabel: "y"}
		for i := 0; i+16 <= len(data) && i < 16*64; i += 16 {
			x := math.Float64frombits(binary.LittleEndian.Uint64(data[i:]))
			y := math.Float64frombits(binary.LittleEndian.Uint64(data[i+8:]))
			s := int(data[i]) % 3
			for len(c.Series) <= s {
				c.Series = append(c.Series, Series{Name: strconv.Itoa(len(c.Series))})
			}
			c.Series[s].Points = append(c.Series[s].Points, Point{X: x, Y: y, Label: strconv.Itoa(int(data[i+1]) % 5)})
		}
		page := render(t, Report{Sections: []Section{{Charts: []Chart{c}}}})
		checkSVG(t, page)
	})
}

func TestScreenshotOfSampleReport(t *testing.T) {
	dir := t.TempDir()
	if *reportOut != "" {
		dir = *reportOut
	}
	page, err := WriteReport(dir, sampleReport())
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "screenshot.png")
	// Tall enough for the whole sample, so that every chart is drawn in it.
	const width, height = 1100, 5400
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	err = Screenshot(ctx, page, shot, width, height)
	if errors.Is(err, ErrNoBrowser) {
		t.Fatalf("%v\nThe report's screenshot test needs headless Chromium; .ci/test installs it.", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot in %v", time.Since(start).Round(time.Millisecond))
	checkNoBrowserLeft(t, page)

	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode %s: %v", shot, err)
	}
	if b := img.Bounds(); b.Dx() != width || b.Dy() != height {
		t.Fatalf("screenshot is %d×%d, want %d×%d", b.Dx(), b.Dy(), width, height)
	}
	inked, first := 0, 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			r, g, bl = r>>8, g>>8, bl>>8
			if r < 235 || g < 235 || bl < 235 {
				inked++
			}
			// The palette's first colour, #0072B2, fills the first bars.
			if near(r, 0x00) && near(g, 0x72) && near(bl, 0xB2) {
				first++
			}
		}
	}
	share := float64(inked) / float64(width*height)
	t.Logf("%.1f%% of pixels inked, %d of the first series' colour", 100*share, first)
	if share < 0.03 {
		t.Errorf("only %.2f%% of the screenshot is not white: the page did not render", 100*share)
	}
	if first < 500 {
		t.Errorf("only %d pixels of the palette's first colour: the charts did not render", first)
	}
}

func TestScreenshotErrors(t *testing.T) {
	ctx := context.Background()
	page, err := WriteReport(t.TempDir(), Report{Title: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if err := Screenshot(ctx, filepath.Join(t.TempDir(), "missing.html"), filepath.Join(t.TempDir(), "x.png"), 100, 100); err == nil {
		t.Error("Screenshot of a missing page succeeded")
	}
	if err := Screenshot(ctx, page, filepath.Join(t.TempDir(), "x.png"), 0, 100); err == nil {
		t.Error("Screenshot of width 0 succeeded")
	}

	// Cut short, the browser is killed with all it started.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	err = Screenshot(short, page, filepath.Join(t.TempDir(), "x.png"), 100, 100)
	switch {
	case err == nil:
		t.Error("Screenshot within 100ms succeeded: the test needs a shorter deadline")
	case !errors.Is(err, ErrNoBrowser) && !errors.Is(err, context.DeadlineExceeded):
		t.Errorf("Screenshot cut short: %v, want a deadline error", err)
	default:
		t.Logf("cut short: %.200s", err)
	}
	checkNoBrowserLeft(t, page)

	t.Setenv("PATH", t.TempDir())
	err = Screenshot(ctx, page, filepath.Join(t.TempDir(), "x.png"), 100, 100)
	if !errors.Is(err, ErrNoBrowser) || !strings.Contains(err.Error(), "apt-get install chromium") {
		t.Errorf("without a browser on PATH: %v, want ErrNoBrowser naming the package", err)
	}
}

func ExampleWriteReport() {
	dir, err := os.MkdirTemp("", "report")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path, err := WriteReport(dir, Report{
		Title: "Chunkers",
		Sections: []Section{{
			Heading: "Throughput",
			Charts: []Chart{{
				Kind: ChartBar, Title: "Chunking throughput", YLabel: "MB/s",
				Series: []Series{{Name: "warm cache", Points: []Point{{Label: "FastCDC", Y: 1420}, {Label: "Rabin", Y: 431}}}},
			}},
		}},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(filepath.Base(path))
	// Output: index.html
}

func near(v, want uint32) bool { return v+6 >= want && v <= want+6 }

// checkNoBrowserLeft fails if a process still has page on its command
// line: Screenshot must not leave its browser behind.
func checkNoBrowserLeft(t *testing.T, page string) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(page)) && bytes.Contains(b, []byte("--screenshot")) {
			t.Errorf("%s is still running: %s", filepath.Dir(p), bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

func render(t testing.TB, r Report) string {
	t.Helper()
	var b strings.Builder
	if err := renderReport(&b, r); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func renderChart(t *testing.T, c Chart) *html.Node {
	t.Helper()
	page := render(t, Report{Sections: []Section{{Charts: []Chart{c}}}})
	checkWellFormed(t, page)
	return parse(t, page)
}

func parse(t testing.TB, page string) *html.Node {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// checkWellFormed tokenizes the page and requires every element that is
// opened to be closed, in order, and every SVG to be well-formed XML.
// (html.Parse alone would repair a broken page instead of failing.)
func checkWellFormed(t testing.TB, page string) {
	t.Helper()
	void := map[string]bool{"meta": true, "br": true, "hr": true, "img": true, "input": true, "link": true, "wbr": true}
	z := html.NewTokenizer(strings.NewReader(page))
	var stack []string
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			if z.Err() != io.EOF {
				t.Fatalf("tokenize: %v", z.Err())
			}
			break
		}
		name, _ := z.TagName()
		switch tt {
		case html.StartTagToken:
			if !void[string(name)] {
				stack = append(stack, string(name))
			}
		case html.EndTagToken:
			if len(stack) == 0 || stack[len(stack)-1] != string(name) {
				t.Fatalf("</%s> closes %v", name, stack)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if len(stack) > 0 {
		t.Fatalf("elements left open: %v", stack)
	}
	checkSVG(t, page)
}

// checkSVG parses every chart's SVG as strict XML.
func checkSVG(t testing.TB, page string) {
	t.Helper()
	rest := page
	for {
		i := strings.Index(rest, `<svg class="plot"`)
		if i < 0 {
			return
		}
		j := strings.Index(rest[i:], "</svg>")
		if j < 0 {
			t.Fatal("an <svg> is not closed")
		}
		svg := rest[i : i+j+len("</svg>")]
		rest = rest[i+j:]
		d := xml.NewDecoder(strings.NewReader(svg))
		for {
			_, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("SVG is not well-formed XML: %v\n%s", err, svg)
			}
		}
		if m := badCoordinate.FindString(svg); m != "" {
			t.Fatalf("SVG has a coordinate %s:\n%s", m, svg)
		}
	}
}

var badCoordinate = regexp.MustCompile(`\b(x|y|x1|y1|x2|y2|width|height|d|transform|viewBox)="[^"]*(NaN|Inf|e[-+])[^"]*"`)

// findAll returns the elements named tag, with class among their classes
// when class is not empty, in document order.
func findAll(n *html.Node, tag, class string) []*html.Node {
	var out []*html.Node
	for d := range n.Descendants() {
		if d.Type == html.ElementNode && d.Data == tag && (class == "" || slices.Contains(strings.Fields(attr(d, "class")), class)) {
			out = append(out, d)
		}
	}
	return out
}

// count counts elements by a selector "tag", "tag.class" or "tag.class
// child".
func count(doc *html.Node, sel string) int {
	parts := strings.Fields(sel)
	tag, class, _ := strings.Cut(parts[0], ".")
	found := findAll(doc, tag, class)
	if len(parts) == 1 {
		return len(found)
	}
	n := 0
	for _, f := range found {
		n += len(findAll(f, parts[1], ""))
	}
	return n
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func attrFloat(t *testing.T, n *html.Node, key string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(attr(n, key), 64)
	if err != nil {
		t.Fatalf("attribute %s: %v", key, err)
	}
	return v
}

func text(n *html.Node) string {
	var b strings.Builder
	for d := range n.Descendants() {
		if d.Type == html.TextNode {
			b.WriteString(d.Data)
		}
	}
	return b.String()
}

// tickTexts gives the labels of the X axis, in order: the tick labels
// that are centred or turned (those of the Y axis are right-aligned).
func tickTexts(doc *html.Node) []string {
	var out []string
	for _, g := range findAll(doc, "g", "ticks") {
		for _, tx := range findAll(g, "text", "") {
			if attr(tx, "text-anchor") != "end" || attr(tx, "transform") != "" {
				out = append(out, strings.TrimSpace(ownText(tx)))
			}
		}
	}
	return out
}

// ownText is an element's text without that of its <title>.
func ownText(n *html.Node) string {
	var b strings.Builder
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.TextNode {
			b.WriteString(c.Data)
		}
	}
	return b.String()
}

func tickPositions(t *testing.T, doc *html.Node) []float64 {
	var out []float64
	for _, g := range findAll(doc, "g", "ticks") {
		for _, tx := range findAll(g, "text", "") {
			if attr(tx, "text-anchor") == "middle" {
				out = append(out, attrFloat(t, tx, "x"))
			}
		}
	}
	return out
}
