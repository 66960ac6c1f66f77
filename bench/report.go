package bench

import (
	"fmt"
	"runtime"
)

// Machine says where figures were made: OS, architecture, CPUs and Go.
func Machine() string {
	return fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
}

// StepProgress is how far a benchmark run is, for a progress bar.
type StepProgress struct {
	// Step says what is measured now, for example "fastcdc 64 KiB x.tar".
	Step string
	// Done and Total are units of work, the same for the whole run: bytes
	// cut, hashed or sent.
	Done, Total int64
}

// A Report is what a benchmark run shows people: sections of text, tables
// and charts. WriteReport renders it as one self-contained HTML page; the
// benchmarks that produce results (chunkers, transfers) each build one.
type Report struct {
	// Title heads the page; Note, under it, says where and how the
	// figures were made (machine, command line, date).
	Title    string
	Note     string
	Sections []Section
}

// A Section is one part of a report: a heading, a paragraph, charts and a
// table, each optional.
type Section struct {
	Heading string
	Text    string
	Charts  []Chart
	Table   *Table
}

// A Table is rows of cells under column headings, as text already
// formatted.
type Table struct {
	Columns []string
	Rows    [][]string
}

// ChartKind is how a chart draws its series.
type ChartKind int

const (
	// ChartLine draws each series as a line through its points, in X order.
	ChartLine ChartKind = iota
	// ChartBar draws one group of bars per category (a point's Label),
	// one bar per series, in the order the categories first appear.
	ChartBar
	// ChartHistogram draws each series as bins: a point's X is the bin's
	// lower edge, the next point's X its upper edge (the last bin as wide
	// as the one before), Y the count.
	ChartHistogram
)

// A Chart is one figure of a report.
type Chart struct {
	Kind           ChartKind
	Title          string
	XLabel, YLabel string
	// LogX spaces the X axis logarithmically (chunk sizes, rates).
	LogX bool
	// LogY spaces the Y axis logarithmically (throughputs or goodputs
	// that span decades). Bars and histogram bins then stand on the
	// axis's lowest value rather than on zero.
	LogY   bool
	Series []Series
}

// A Series is one named set of points of a chart.
type Series struct {
	Name   string
	Points []Point
}

// A Point is one value of a series: X and Y, or for a bar chart the
// category Label and Y.
type Point struct {
	X, Y  float64
	Label string
}
