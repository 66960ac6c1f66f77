package bench

import (
	"bytes"
	"cmp"
	"fmt"
	"html/template"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// WriteReport renders r as one self-contained HTML page, dir/index.html,
// creating dir if needed, and returns the page's path. The page needs
// nothing else: its style is inline and its charts are SVG drawn here, so
// it opens from a file anywhere, offline and in CI, with or without
// JavaScript. Every text of r is escaped.
//
// Charts leave out what they cannot place and say so in a note under the
// figure: points with a NaN or infinite coordinate, points at X ≤ 0 on a
// log X axis, and points, bars and bins at Y ≤ 0 on a log Y axis. A chart
// with nothing left to draw shows "No data". Table cells stay on one line
// (a wide table scrolls) except long free text, which wraps at spaces. The
// same report always makes the same bytes.
func WriteReport(dir string, r Report) (string, error) {
	var page bytes.Buffer
	if err := renderReport(&page, r); err != nil {
		return "", fmt.Errorf("render report %q: %w", r.Title, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("write report: %w", err)
	}
	path := filepath.Join(dir, "index.html")
	// Written aside and renamed into place, so that a browser reloading
	// the page, or Screenshot, never sees half of it.
	tmp, err := os.CreateTemp(dir, ".index-*.html")
	if err != nil {
		return "", fmt.Errorf("write report: %w", err)
	}
	_, err = tmp.Write(page.Bytes())
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// CreateTemp makes the file private; a report is meant to be read.
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("write report %s: %w", path, err)
	}
	return path, nil
}

// renderReport writes r to w as the HTML page that WriteReport saves.
func renderReport(w io.Writer, r Report) error {
	return pageTemplate.Execute(w, newPageView(r))
}

// The view types below are the report laid out for the template: every
// position computed and every number formatted, so that the template only
// places values (and escapes the text).

type pageView struct {
	Title    string
	Note     []string
	Nav      bool
	Sections []sectionView
}

type sectionView struct {
	ID         string
	Heading    string
	NavLabel   string
	Paragraphs []string
	Charts     []chartView
	Table      *tableView
}

type tableView struct {
	Columns []cellView
	Rows    [][]cellView
}

type cellView struct {
	Text string
	Num  bool
	Wrap bool // long free text, which may wrap at spaces
}

func newPageView(r Report) pageView {
	p := pageView{Title: r.Title, Note: paragraphs(r.Note)}
	if p.Title == "" {
		p.Title = "chunksync report"
	}
	// A table of contents helps from three sections on; below that it is
	// only one more thing to read.
	p.Nav = len(r.Sections) >= 3
	for i, s := range r.Sections {
		sv := sectionView{
			ID:         "section-" + strconv.Itoa(i+1),
			Heading:    s.Heading,
			NavLabel:   s.Heading,
			Paragraphs: paragraphs(s.Text),
		}
		if sv.NavLabel == "" {
			sv.NavLabel = "Section " + strconv.Itoa(i+1)
		}
		for _, c := range s.Charts {
			sv.Charts = append(sv.Charts, newChartView(c))
		}
		if s.Table != nil {
			sv.Table = newTableView(*s.Table)
		}
		p.Sections = append(p.Sections, sv)
	}
	return p
}

var blankLine = regexp.MustCompile(`\n[ \t]*\n`)

// paragraphs splits text at blank lines; single line breaks stay, shown by
// the page's white-space rule.
func paragraphs(text string) []string {
	var out []string
	for _, p := range blankLine.Split(strings.TrimSpace(text), -1) {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// numericCell matches the cells of a numeric column as benchmarks format
// them: "1234", "1,234.5", "-3", "45%", "1.2x", "64K", "52.3 MiB/s".
var numericCell = regexp.MustCompile(`^[-+−~≈]?[0-9][0-9,._']*([eE][-+]?[0-9]+)?\s?(%|×|[A-Za-zµ/]{1,8})?$`)

// isBlankCell says whether a cell stands for no value, which neither makes
// nor breaks a numeric column.
func isBlankCell(s string) bool {
	switch strings.TrimSpace(s) {
	case "", "-", "–", "—", "n/a", "N/A", "NA", "?":
		return true
	}
	return false
}

// longCellRunes is where a cell of text becomes long enough to wrap: a
// sentence, an error message. Shorter cells (names, profiles like
// "200mbit 20ms 1%") stay on one line, since broken over two or three they
// read as several values.
const longCellRunes = 60

// newTableView right-aligns the columns whose every cell is a number, so
// that digits line up for comparison, and lets only long text wrap.
func newTableView(t Table) *tableView {
	n := len(t.Columns)
	for _, row := range t.Rows {
		n = max(n, len(row))
	}
	numeric := make([]bool, n)
	for c := range n {
		seen := false
		numeric[c] = true
		for _, row := range t.Rows {
			if c >= len(row) || isBlankCell(row[c]) {
				continue
			}
			seen = true
			if !numericCell.MatchString(strings.TrimSpace(row[c])) {
				numeric[c] = false
				break
			}
		}
		numeric[c] = numeric[c] && seen
	}
	tv := &tableView{}
	for c := range n {
		name := ""
		if c < len(t.Columns) {
			name = t.Columns[c]
		}
		tv.Columns = append(tv.Columns, cellView{Text: name, Num: numeric[c]})
	}
	for _, row := range t.Rows {
		cells := make([]cellView, n)
		for c := range n {
			cells[c].Num = numeric[c]
			if c < len(row) {
				cells[c].Text = row[c]
				cells[c].Wrap = !numeric[c] && utf8.RuneCountInString(row[c]) > longCellRunes
			}
		}
		tv.Rows = append(tv.Rows, cells)
	}
	return tv
}

// The chart's drawing box, in the units of its SVG viewBox; the page
// scales it to the width it has.
const (
	chartWidth      = 800
	chartHeight     = 400
	emptyHeight     = 140
	charWidth       = 7.2 // a glyph of the 12px tick labels, on the wide side
	maxLabelRunes   = 48  // legend names and long categories are cut here
	rotatedLabelDeg = 40  // bar categories too long to stand side by side (the template's rotate(-40))
)

// palette is the Okabe–Ito set of colours, told apart with the common
// kinds of colour blindness, ordered to keep the first few far apart and
// yellow, the weakest on white, last. Past eight series the colours repeat
// with a dash pattern, and line markers change shape every series, so no
// two series of a chart look the same.
var palette = []string{"#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442"}

var dashes = []string{"", "7 4", "2 3", "9 3 2 3"}

type chartView struct {
	Kind    string // "line", "bar" or "histogram"
	Title   string
	Label   string
	W, H    int
	Plot    box
	Grid    []segment
	XTicks  []tickView
	YTicks  []tickView
	XLabel  textView
	YLabel  textView
	AxisX   *segment
	AxisY   *segment
	ZeroY   float64
	HasZero bool
	Series  []seriesView
	Legend  []legendView
	Notes   []string
	Empty   string
}

type box struct{ X, Y, W, H float64 }

type segment struct {
	X1, Y1, X2, Y2 float64
	Minor          bool
}

type tickView struct {
	X, Y   float64
	Text   string
	Full   string // the whole label when Text is cut short
	Anchor string
	Rotate bool
	Mark   segment
}

type textView struct {
	X, Y float64
	Text string
	Full string
}

type seriesView struct {
	Name    string
	Colour  string
	Dash    string
	Path    string // a line series' polyline, a histogram's outline
	Markers []markerView
	Rects   []rectView
	Values  []textView // figures over the bars, when there is room
}

type markerView struct {
	D     string
	Title string
}

type rectView struct {
	X, Y, W, H float64
	Title      string
}

type legendView struct {
	Kind   string
	Name   string
	Full   string
	Colour string
	Dash   string
	Marker string
}

// chartNotes counts what a chart had to leave out, to say so under it.
type chartNotes struct {
	nonFinite    int
	nonPositive  int // X ≤ 0 on a log X axis
	nonPositiveY int // Y ≤ 0 on a log Y axis
	duplicates   int
	binTies      int
	empty        []string
	other        []string
}

func (n *chartNotes) lines() []string {
	var out []string
	out = append(out, n.other...)
	if n.nonFinite > 0 {
		out = append(out, fmt.Sprintf("%s left out: not finite numbers (NaN or ±Inf).", plural(n.nonFinite, "point")))
	}
	if n.nonPositive > 0 {
		out = append(out, fmt.Sprintf("%s left out: X ≤ 0 has no place on a log axis.", plural(n.nonPositive, "point")))
	}
	if n.nonPositiveY > 0 {
		out = append(out, fmt.Sprintf("%s left out: Y ≤ 0 has no place on a log axis.", plural(n.nonPositiveY, "point")))
	}
	if n.duplicates > 0 {
		out = append(out, fmt.Sprintf("%s repeated within a series: only the first value of each is drawn.", plural(n.duplicates, "category")))
	}
	if n.binTies > 0 {
		out = append(out, fmt.Sprintf("%s left out: another bin of the series starts at the same X.", plural(n.binTies, "bin")))
	}
	for _, name := range n.empty {
		out = append(out, fmt.Sprintf("Series %q has no points to draw.", name))
	}
	return out
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	if strings.HasSuffix(word, "y") {
		return strconv.Itoa(n) + " " + strings.TrimSuffix(word, "y") + "ies"
	}
	return strconv.Itoa(n) + " " + word + "s"
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// newChartView lays c out: it cleans the data, chooses the axes and
// computes every position of the drawing.
func newChartView(c Chart) chartView {
	v := chartView{Title: c.Title, Label: c.Title, W: chartWidth, H: chartHeight}
	if v.Label == "" {
		v.Label = "chart"
	}
	var notes chartNotes
	kind := c.Kind
	switch kind {
	case ChartLine:
		v.Kind = "line"
	case ChartBar:
		v.Kind = "bar"
	case ChartHistogram:
		v.Kind = "histogram"
	default:
		notes.other = append(notes.other, fmt.Sprintf("Unknown chart kind %d: drawn as lines.", int(kind)))
		kind, v.Kind = ChartLine, "line"
	}
	for i, s := range c.Series {
		v.Legend = append(v.Legend, newLegendView(v.Kind, i, seriesName(s, i)))
	}
	// One unnamed series needs no legend: the title says what it is.
	if len(c.Series) == 1 && c.Series[0].Name == "" {
		v.Legend = nil
	}
	if kind == ChartBar {
		layoutBars(&v, c, &notes)
	} else {
		layoutXY(&v, c, kind, &notes)
	}
	v.Notes = notes.lines()
	return v
}

func seriesName(s Series, i int) string {
	if s.Name != "" {
		return s.Name
	}
	return "series " + strconv.Itoa(i+1)
}

func seriesColour(i int) string { return palette[i%len(palette)] }
func seriesDash(i int) string   { return dashes[(i/len(palette))%len(dashes)] }

func newLegendView(kind string, i int, name string) legendView {
	short, full := truncate(name, maxLabelRunes)
	return legendView{
		Kind:   kind,
		Name:   short,
		Full:   full,
		Colour: seriesColour(i),
		Dash:   seriesDash(i),
		Marker: markerPath(i, 14, 7, 4),
	}
}

// truncate cuts s to at most n runes, ending it with an ellipsis; full is
// s when it was cut, for a tooltip, and empty otherwise.
func truncate(s string, n int) (short, full string) {
	if n < 2 {
		n = 2
	}
	if utf8.RuneCountInString(s) <= n {
		return s, ""
	}
	r := []rune(s)
	return string(r[:n-1]) + "…", s
}

// markerPath draws series i's marker, centred on (x, y) with radius r:
// the shape changes with the series so that lines stay apart without
// colour.
func markerPath(i int, x, y, r float64) string {
	switch i % 5 {
	case 1: // square
		s := r * 0.88
		return fmt.Sprintf("M%s %sh%sv%sh%sZ", num(x-s), num(y-s), num(2*s), num(2*s), num(-2*s))
	case 2: // triangle
		t := r * 1.25
		return fmt.Sprintf("M%s %sL%s %sL%s %sZ", num(x), num(y-t), num(x+t*0.866), num(y+t*0.5), num(x-t*0.866), num(y+t*0.5))
	case 3: // diamond
		d := r * 1.25
		return fmt.Sprintf("M%s %sL%s %sL%s %sL%s %sZ", num(x), num(y-d), num(x+d), num(y), num(x), num(y+d), num(x-d), num(y))
	case 4: // triangle pointing down
		t := r * 1.25
		return fmt.Sprintf("M%s %sL%s %sL%s %sZ", num(x), num(y+t), num(x+t*0.866), num(y-t*0.5), num(x-t*0.866), num(y-t*0.5))
	}
	return fmt.Sprintf("M%s %sa%s %s 0 1 0 %s 0a%s %s 0 1 0 %s 0Z", num(x-r), num(y), num(r), num(r), num(2*r), num(r), num(r), num(-2*r))
}

// num formats a coordinate of the drawing; a tenth of a unit is finer
// than a screen shows.
func num(v float64) string {
	if !finite(v) {
		v = 0
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	if s == "-0" {
		s = "0"
	}
	return s
}

// layoutBars draws one group of bars per category, categories in the order
// they first appear, one bar per series. A point's category is its Label,
// or its X when the Label is empty. On a log Y axis the bars stand on the
// axis's lowest value, and a value ≤ 0 leaves its place in the group empty
// (its category still shows, so the gap is seen).
func layoutBars(v *chartView, c Chart, notes *chartNotes) {
	type bar struct {
		cat int
		y   float64
	}
	var cats []string
	catIndex := map[string]int{}
	bars := make([][]bar, len(c.Series))
	lo, hi := math.Inf(1), math.Inf(-1)
	var ys []float64
	for i, s := range c.Series {
		seen := map[string]bool{}
		for _, p := range s.Points {
			if !finite(p.Y) {
				notes.nonFinite++
				continue
			}
			label := p.Label
			if label == "" {
				label = exact(p.X)
			}
			if seen[label] {
				notes.duplicates++
				continue
			}
			seen[label] = true
			ci, ok := catIndex[label]
			if !ok {
				ci = len(cats)
				catIndex[label] = ci
				cats = append(cats, label)
			}
			if c.LogY && p.Y <= 0 {
				notes.nonPositiveY++
				continue
			}
			bars[i] = append(bars[i], bar{ci, p.Y})
			ys = append(ys, p.Y)
			lo, hi = min(lo, p.Y), max(hi, p.Y)
		}
		if len(bars[i]) == 0 {
			notes.empty = append(notes.empty, seriesName(s, i))
		}
	}
	if len(ys) == 0 {
		setEmpty(v)
		return
	}
	y := linearAxis(lo, hi, 5, true, false)
	if c.LogY {
		y = standingLogAxis(lo, hi, isBinary(ys))
	}
	plot := plotBox(v, y, c.YLabel != "")
	nSeries := max(len(c.Series), 1)
	groupW := plot.W / float64(len(cats))

	// Categories stand level while they fit their group; longer ones are
	// turned, and cut short past a length that would eat the chart.
	fit := int((groupW - 6) / charWidth)
	rotate := false
	longest := 0
	for _, name := range cats {
		longest = max(longest, utf8.RuneCountInString(name))
	}
	if longest > fit {
		rotate = true
		fit = 24
	}
	bottom := 24.0
	if rotate {
		slant := rotatedLabelDeg * math.Pi / 180
		bottom = 16 + float64(min(longest, fit))*charWidth*math.Sin(slant)
		// A turned label reaches left of its bar: the first ones may need
		// a wider margin. Widening narrows the groups, hence two rounds.
		for range 2 {
			need := 0.0
			for ci, name := range cats {
				reach := float64(min(utf8.RuneCountInString(name), fit))*charWidth*math.Cos(slant) + 4
				need = max(need, reach-(plot.X+(float64(ci)+0.5)*groupW))
			}
			if need <= 0 {
				break
			}
			plot.X += need
			plot.W -= need
			groupW = plot.W / float64(len(cats))
		}
	}
	if c.XLabel != "" {
		bottom += 22
	}
	plot.H = float64(v.H) - plot.Y - bottom
	v.Plot = plot
	yPos := func(val float64) float64 { return plot.Y + plot.H - y.frac(val)*plot.H }
	yAxisView(v, y, yPos)
	axisLabels(v, c, bottom)
	if y.lo < 0 {
		v.HasZero, v.ZeroY = true, yPos(0)
	}

	for ci, name := range cats {
		x := plot.X + (float64(ci)+0.5)*groupW
		t := tickView{X: x, Y: plot.Y + plot.H + 17, Anchor: "middle", Mark: segment{X1: x, Y1: plot.Y + plot.H, X2: x, Y2: plot.Y + plot.H + 4}}
		t.Text, t.Full = truncate(name, max(fit, 3))
		if rotate {
			t.Y, t.Anchor, t.Rotate = plot.Y+plot.H+12, "end", true
		}
		v.XTicks = append(v.XTicks, t)
	}

	inner := groupW * 0.8
	barW := inner / float64(nSeries)
	gap := min(2, barW*0.12)
	// Figures over the bars only while they fit: a crowded chart is read by
	// its shape and its tooltips.
	showValues := len(ys) <= 24 && barW >= 34
	base := yPos(baseValue(y))
	for i, s := range c.Series {
		sv := seriesView{Name: seriesName(s, i), Colour: seriesColour(i)}
		for _, b := range bars[i] {
			x := plot.X + float64(b.cat)*groupW + (groupW-inner)/2 + float64(i)*barW + gap/2
			top := yPos(b.y)
			h := math.Abs(base - top)
			// A bar of a non-zero value never vanishes.
			if h < 1 && b.y != 0 {
				h = 1
				if b.y > 0 {
					top = base - 1
				}
			}
			r := rectView{X: x, Y: min(top, base), W: barW - gap, H: h}
			r.Title = fmt.Sprintf("%s — %s\n%s: %s", sv.Name, cats[b.cat], axisName(c.YLabel, "value"), exactAndHuman(b.y, false))
			sv.Rects = append(sv.Rects, r)
			if showValues {
				ty := r.Y - 5
				if b.y < 0 {
					ty = r.Y + r.H + 13
				}
				sv.Values = append(sv.Values, textView{X: x + (barW-gap)/2, Y: ty, Text: human(b.y, false)})
			}
		}
		v.Series = append(v.Series, sv)
	}
}

// baseValue is where bars and bins stand on the Y axis a: zero, or on a
// log axis, which has no zero, its lowest value.
func baseValue(a axis) float64 {
	if a.log {
		return a.lo
	}
	return 0
}

// standingLogAxis is the log Y axis of bars and bins, which stand on its
// lowest value: where the smallest value would fall on that, and so have
// no height, the axis reaches one step lower.
func standingLogAxis(lo, hi float64, binary bool) axis {
	a := logAxis(lo, hi, binary)
	if a.lo >= lo {
		if b := logAxis(lo*(1-1e-6), hi, binary); b.lo < lo {
			return b
		}
	}
	return a
}

func axisName(label, fallback string) string {
	if label != "" {
		return label
	}
	return fallback
}

// layoutXY draws line charts and histograms, whose X is a number. On a log
// Y axis a histogram's bins of count ≤ 0 are left out, and the bins around
// them keep their edges.
func layoutXY(v *chartView, c Chart, kind ChartKind, notes *chartNotes) {
	type series struct {
		pts   []Point
		upper []float64 // a histogram's bin upper edges
	}
	data := make([]series, len(c.Series))
	xlo, xhi := math.Inf(1), math.Inf(-1)
	ylo, yhi := math.Inf(1), math.Inf(-1)
	var xs, ys []float64
	for i, s := range c.Series {
		pts := make([]Point, 0, len(s.Points))
		for _, p := range s.Points {
			switch {
			case !finite(p.X) || !finite(p.Y):
				notes.nonFinite++
			case c.LogX && p.X <= 0:
				notes.nonPositive++
			case c.LogY && p.Y <= 0 && kind != ChartHistogram:
				notes.nonPositiveY++
			default:
				pts = append(pts, p)
			}
		}
		slices.SortStableFunc(pts, func(a, b Point) int { return cmp.Compare(a.X, b.X) })
		if kind == ChartHistogram {
			pts = slices.CompactFunc(pts, func(a, b Point) bool {
				if a.X == b.X {
					notes.binTies++
					return true
				}
				return false
			})
			data[i].upper = binEdges(pts, c.LogX)
			if c.LogY {
				// Only now, so that an empty bin's neighbours do not
				// stretch over it.
				j := 0
				for k, p := range pts {
					if p.Y <= 0 {
						notes.nonPositiveY++
						continue
					}
					pts[j], data[i].upper[j] = p, data[i].upper[k]
					j++
				}
				pts, data[i].upper = pts[:j], data[i].upper[:j]
			}
		}
		data[i].pts = pts
		if len(pts) == 0 {
			notes.empty = append(notes.empty, seriesName(s, i))
		}
		for j, p := range pts {
			xs, ys = append(xs, p.X), append(ys, p.Y)
			xlo, xhi = min(xlo, p.X), max(xhi, p.X)
			ylo, yhi = min(ylo, p.Y), max(yhi, p.Y)
			if data[i].upper != nil {
				xhi = max(xhi, data[i].upper[j])
			}
		}
	}
	if len(xs) == 0 {
		setEmpty(v)
		return
	}

	var x axis
	binary := isBinary(xs)
	switch {
	case c.LogX:
		x = logAxis(xlo, xhi, binary)
	case binary:
		x = binaryAxis(xlo, xhi, 7)
	default:
		x = linearAxis(xlo, xhi, 7, false, true)
	}
	var y axis
	switch {
	case c.LogY && kind == ChartHistogram:
		y = standingLogAxis(ylo, yhi, isBinary(ys))
	case c.LogY:
		y = logAxis(ylo, yhi, isBinary(ys))
	default:
		// Bins stand on zero; a line includes it only when that costs
		// less than half the height, so small differences stay visible.
		includeZero := kind == ChartHistogram || (ylo > 0 && ylo <= yhi/2) || (yhi < 0 && yhi >= ylo/2)
		y = linearAxis(ylo, yhi, 5, includeZero, false)
	}

	plot := plotBox(v, y, c.YLabel != "")
	bottom := 24.0
	if c.XLabel != "" {
		bottom += 22
	}
	plot.H = float64(v.H) - plot.Y - bottom
	v.Plot = plot
	// Lines keep their end markers off the axes; histogram bins start on
	// the Y axis.
	pad := 0.0
	if kind == ChartLine {
		pad = 10
	}
	xPos := func(val float64) float64 { return plot.X + pad + x.frac(val)*(plot.W-2*pad) }
	yPos := func(val float64) float64 { return plot.Y + plot.H - y.frac(val)*plot.H }
	yAxisView(v, y, yPos)
	axisLabels(v, c, bottom)
	if y.lo < 0 {
		v.HasZero, v.ZeroY = true, yPos(0)
	}
	for _, t := range x.ticks {
		px := xPos(t.v)
		v.Grid = append(v.Grid, segment{X1: px, Y1: plot.Y, X2: px, Y2: plot.Y + plot.H})
		v.XTicks = append(v.XTicks, tickView{
			X: px, Y: plot.Y + plot.H + 17, Text: t.label, Anchor: "middle",
			Mark: segment{X1: px, Y1: plot.Y + plot.H, X2: px, Y2: plot.Y + plot.H + 4},
		})
	}
	for _, m := range x.minor {
		px := xPos(m)
		v.Grid = append(v.Grid, segment{X1: px, Y1: plot.Y, X2: px, Y2: plot.Y + plot.H, Minor: true})
	}

	xName := axisName(c.XLabel, "x")
	yName := axisName(c.YLabel, "y")
	if kind == ChartHistogram {
		yName = axisName(c.YLabel, "count")
	}
	for i, s := range c.Series {
		sv := seriesView{Name: seriesName(s, i), Colour: seriesColour(i), Dash: seriesDash(i)}
		pts := data[i].pts
		// Many points make small markers: they are still there for the
		// tooltips, but the line carries the shape.
		radius := 4.0
		if len(pts) > 40 {
			radius = 2.5
		}
		var d strings.Builder
		if kind == ChartLine {
			for j, p := range pts {
				px, py := xPos(p.X), yPos(p.Y)
				if j == 0 {
					d.WriteString("M")
				} else {
					d.WriteString("L")
				}
				d.WriteString(num(px) + " " + num(py))
			}
			for _, p := range pts {
				sv.Markers = append(sv.Markers, markerView{
					D:     markerPath(i, xPos(p.X), yPos(p.Y), radius),
					Title: fmt.Sprintf("%s\n%s: %s\n%s: %s", sv.Name, xName, exactAndHuman(p.X, binary), yName, exactAndHuman(p.Y, false)),
				})
			}
		} else {
			base := yPos(baseValue(y))
			upper := data[i].upper
			for j, p := range pts {
				x0, x1 := xPos(p.X), xPos(upper[j])
				top := yPos(p.Y)
				// Bins touch (each ends where the next starts): one
				// outline steps over all of them, down to the base and
				// up again only where a bin was left out.
				if j == 0 || upper[j-1] != p.X {
					if j > 0 {
						d.WriteString("L" + num(xPos(upper[j-1])) + " " + num(base))
					}
					d.WriteString("M" + num(x0) + " " + num(base))
				}
				d.WriteString("L" + num(x0) + " " + num(top) + "L" + num(x1) + " " + num(top))
				if j == len(pts)-1 {
					d.WriteString("L" + num(x1) + " " + num(base))
				}
				sv.Rects = append(sv.Rects, rectView{
					X: x0, Y: min(top, base), W: math.Max(x1-x0, 0), H: math.Abs(base - top),
					Title: fmt.Sprintf("%s\n%s: %s to %s\n%s: %s", sv.Name, xName, exactAndHuman(p.X, binary), exactAndHuman(data[i].upper[j], binary), yName, exactAndHuman(p.Y, false)),
				})
			}
		}
		sv.Path = d.String()
		v.Series = append(v.Series, sv)
	}
}

// binEdges gives each bin's upper edge: the next bin's lower edge, and for
// the last bin one as wide as the bin before it, as wide on the axis that
// draws it (on a log axis the same ratio). A lone bin is one unit wide, or
// an octave on a log axis.
func binEdges(pts []Point, logX bool) []float64 {
	upper := make([]float64, len(pts))
	for j := range pts {
		if j+1 < len(pts) {
			upper[j] = pts[j+1].X
			continue
		}
		x := pts[j].X
		switch {
		case j > 0 && logX:
			upper[j] = x * (x / pts[j-1].X)
		case j > 0:
			upper[j] = x + (x - pts[j-1].X)
		case logX:
			upper[j] = x * 2
		default:
			upper[j] = x + 1
		}
		if !finite(upper[j]) || upper[j] <= x {
			// Past the largest float the bin has no width to give.
			upper[j] = x
		}
	}
	return upper
}

func setEmpty(v *chartView) {
	v.H = emptyHeight
	v.Empty = "No data"
	v.Legend = nil
}

// plotBox places the plot inside the chart: room on the left for the Y
// tick labels and the Y axis title; the bottom is the caller's.
func plotBox(v *chartView, y axis, yTitle bool) box {
	widest := 0
	for _, t := range y.ticks {
		widest = max(widest, utf8.RuneCountInString(t.label))
	}
	left := 14 + float64(widest)*charWidth
	if yTitle {
		left += 22
	}
	const top, right = 14, 18
	return box{X: left, Y: top, W: float64(v.W) - left - right}
}

// PlotRight is the right edge of the plot, for the template.
func (v chartView) PlotRight() float64 { return v.Plot.X + v.Plot.W }

// yAxisView draws the axis lines, and the Y axis's ticks and grid lines.
func yAxisView(v *chartView, y axis, yPos func(float64) float64) {
	p := v.Plot
	v.AxisY = &segment{X1: p.X, Y1: p.Y, X2: p.X, Y2: p.Y + p.H}
	v.AxisX = &segment{X1: p.X, Y1: p.Y + p.H, X2: p.X + p.W, Y2: p.Y + p.H}
	for _, m := range y.minor {
		py := yPos(m)
		v.Grid = append(v.Grid, segment{X1: p.X, Y1: py, X2: p.X + p.W, Y2: py, Minor: true})
	}
	for _, t := range y.ticks {
		py := yPos(t.v)
		v.Grid = append(v.Grid, segment{X1: v.Plot.X, Y1: py, X2: v.Plot.X + v.Plot.W, Y2: py})
		v.YTicks = append(v.YTicks, tickView{
			X: v.Plot.X - 8, Y: py + 4, Text: t.label, Anchor: "end",
			Mark: segment{X1: v.Plot.X - 4, Y1: py, X2: v.Plot.X, Y2: py},
		})
	}
}

// axisLabels places the axes' titles, cut to the length of their axis.
func axisLabels(v *chartView, c Chart, bottom float64) {
	p := v.Plot
	if c.XLabel != "" {
		text, full := truncate(c.XLabel, int(p.W/7.5))
		v.XLabel = textView{X: p.X + p.W/2, Y: p.Y + p.H + bottom - 6, Text: text, Full: full}
	}
	if c.YLabel != "" {
		text, full := truncate(c.YLabel, int(p.H/7.5))
		v.YLabel = textView{X: 14, Y: p.Y + p.H/2, Text: text, Full: full}
	}
}

// An axis maps values onto [0, 1] of its length, linearly or by their
// logarithm, and carries its labelled ticks and unlabelled minor lines.
type axis struct {
	lo, hi float64
	log    bool
	ticks  []tick
	minor  []float64
}

type tick struct {
	v     float64
	label string
}

func (a axis) frac(v float64) float64 {
	var f float64
	if a.log {
		f = (math.Log(v) - math.Log(a.lo)) / (math.Log(a.hi) - math.Log(a.lo))
	} else {
		// Halved first, so that a span of extreme values does not overflow.
		f = (v/2 - a.lo/2) / (a.hi/2 - a.lo/2)
	}
	if !finite(f) {
		return 0.5
	}
	// Values past the axis's end (only the most extreme floats get there)
	// stay on the chart's edge.
	return math.Max(-0.02, math.Min(1.02, f))
}

// linearAxis covers [lo, hi] with about n ticks at a 1-2-5 step. A Y
// axis has its ends rounded out to a tick; a tight one (an X axis) ends at
// the data, so that no width is spent beyond the first and last point.
func linearAxis(lo, hi float64, n int, includeZero, tight bool) axis {
	if includeZero {
		lo, hi = min(lo, 0), max(hi, 0)
	}
	lo, hi = widen(lo, hi)
	step := niceStep(hi/float64(n) - lo/float64(n))
	a, vs := stepAxis(lo, hi, step, 4*n, tight)
	// One suffix for the whole axis, chosen by its largest tick, so that
	// the labels compare at a glance: 0, 0.5M, 1M rather than 500K, 1M.
	scale, suffix := siScale(largestAbs(vs))
	for _, v := range vs {
		a.ticks = append(a.ticks, tick{v, formatScaled(v, step, scale, suffix)})
	}
	return a
}

// binaryAxis is the tight linear X axis of byte counts: steps of a power of
// two, labelled in powers of 1024 (16K, 32K, 48K), so that the ticks fall
// on the sizes chunkers are set to.
func binaryAxis(lo, hi float64, n int) axis {
	lo, hi = widen(lo, hi)
	raw := hi/float64(n) - lo/float64(n)
	step := math.Pow(2, math.Round(math.Log2(raw)))
	if !(step > 0) || !finite(step) {
		step = niceStep(raw)
	}
	a, vs := stepAxis(lo, hi, step, 4*n, true)
	unit, suffix := 1.0, ""
	for i := len(binarySuffixes) - 1; i > 0; i-- {
		if u := math.Pow(1024, float64(i)); largestAbs(vs) >= u {
			unit, suffix = u, binarySuffixes[i]
			break
		}
	}
	for _, v := range vs {
		a.ticks = append(a.ticks, tick{v, formatScaled(v, step, unit, suffix)})
	}
	return a
}

// widen gives a range of one value some width to spread ticks over.
func widen(lo, hi float64) (float64, float64) {
	if lo != hi {
		return lo, hi
	}
	if lo == 0 {
		return 0, 1
	}
	d := math.Abs(lo) / 2
	return lo - d, hi + d
}

// stepAxis places ticks every step from below lo to above hi, at most
// limit+1 of them. A tight axis ends at lo and hi, with the ticks between;
// otherwise its ends are the outer ticks.
func stepAxis(lo, hi, step float64, limit int, tight bool) (axis, []float64) {
	a := axis{lo: math.Floor(lo/step) * step, hi: math.Ceil(hi/step) * step}
	if !finite(a.lo) {
		a.lo = lo
	}
	if !finite(a.hi) {
		a.hi = hi
	}
	count := int(math.Min(math.Round(a.hi/step-a.lo/step), float64(limit)))
	var vs []float64
	for i := 0; i <= count; i++ {
		v := a.lo + float64(i)*step
		if !finite(v) {
			break // past the largest float, on an axis of extremes
		}
		if math.Abs(v) < step*1e-9 {
			v = 0 // not 1e-17, from adding steps
		}
		if tight && (v < lo-step*1e-9 || v > hi+step*1e-9) {
			continue
		}
		vs = append(vs, v)
	}
	if tight {
		a.lo, a.hi = lo, hi
	}
	return a, vs
}

func largestAbs(vs []float64) float64 {
	m := 0.0
	for _, v := range vs {
		m = max(m, math.Abs(v))
	}
	return m
}

// niceStep rounds raw up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if !(raw > 0) || !finite(raw) {
		return 1
	}
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	var step float64
	switch f := raw / mag; {
	case f <= 1:
		step = mag
	case f <= 2:
		step = 2 * mag
	case f <= 5:
		step = 5 * mag
	default:
		step = 10 * mag
	}
	if !(step > 0) || !finite(step) {
		return raw
	}
	return step
}

// isBinary says whether the values are byte counts that read best in
// powers of two: every one a power of two or a whole number of KiB.
func isBinary(xs []float64) bool {
	for _, x := range xs {
		if x != math.Trunc(x) || x < 0 || x > 1<<62 {
			return false
		}
		n := uint64(x)
		if n&(n-1) != 0 && n%1024 != 0 {
			return false
		}
	}
	return true
}

// logAxis covers [lo, hi] (both > 0) with ticks at powers of two (binary)
// or ten, thinned to at most ten; within two decades a decimal axis also
// ticks at 2 and 5 times a power of ten, and within a factor of about 2.5
// at the 1-2-5 steps of a linear axis.
func logAxis(lo, hi float64, binary bool) axis {
	a := axis{log: true}
	base, label := 10.0, formatPow10
	emin, emax := -323.0, 308.0
	if binary {
		base, label = 2, formatPow2
		emin, emax = -1074, 1023
	}
	logb := func(v float64) float64 { return math.Log(v) / math.Log(base) }
	e0 := math.Max(emin, math.Floor(logb(lo)+1e-9))
	e1 := math.Min(emax, math.Ceil(logb(hi)-1e-9))
	if e0 >= e1 {
		e0, e1 = math.Max(emin, e1-1), math.Min(emax, e0+1)
	}
	if !binary && e1-e0 <= 2 {
		if b := steps125(lo, hi, e0, e1); len(b.ticks) >= 3 {
			return b
		}
		// Less than a factor of about 2.5: powers of ten would squeeze
		// the data into a sliver, so the ticks are those of a linear axis.
		// (One value alone is better placed among powers of ten.)
		if b := linearAxis(lo, hi, 6, false, false); lo < hi && b.lo > 0 {
			b.log = true
			return b
		}
	}
	k := 1.0
	for _, s := range []float64{1, 2, 5, 10, 20, 50, 100, 200, 500} {
		k = s
		if (e1-e0)/s <= 9 {
			break
		}
	}
	a.lo, a.hi = math.Pow(base, e0), math.Pow(base, e1)
	for e := e0; e <= e1; e++ {
		v := math.Pow(base, e)
		if math.Mod(e, k) == 0 {
			a.ticks = append(a.ticks, tick{v, label(e)})
		} else if e1-e0 <= 40 {
			a.minor = append(a.minor, v)
		}
	}
	// Thinning can leave the ends bare; the axis still needs two labels.
	if len(a.ticks) < 2 {
		a.ticks = []tick{{a.lo, label(e0)}, {a.hi, label(e1)}}
	}
	return a
}

// steps125 is the decimal log axis of a narrow range: its ends and ticks
// at 1, 2 and 5 times powers of ten.
func steps125(lo, hi, e0, e1 float64) axis {
	a := axis{log: true, lo: math.Pow(10, e0), hi: math.Pow(10, e1)}
	var vs []float64
	for e := e0; e <= e1; e++ {
		for _, m := range []float64{1, 2, 5} {
			vs = append(vs, m*math.Pow(10, e))
		}
	}
	for _, v := range vs {
		if v <= lo {
			a.lo = v
		}
	}
	for i := len(vs) - 1; i >= 0; i-- {
		if vs[i] >= hi {
			a.hi = vs[i]
		}
	}
	for _, v := range vs {
		if v >= a.lo && v <= a.hi {
			a.ticks = append(a.ticks, tick{v, formatSI(v, v)})
		}
	}
	return a
}

var siUnits = []struct {
	scale  float64
	suffix string
}{{1e15, "P"}, {1e12, "T"}, {1e9, "G"}, {1e6, "M"}, {1e3, "K"}}

// siScale chooses the decimal suffix for numbers as large as a: none
// below 10000, which reads as easily in full.
func siScale(a float64) (float64, string) {
	if a >= 1e4 {
		for _, u := range siUnits {
			if a >= u.scale {
				return u.scale, u.suffix
			}
		}
	}
	return 1, ""
}

// formatSI gives v with its own decimal suffix (K, M, G, T, P) and as
// many decimals as a tick step of step needs: "0", "2.5", "500K", "1.2M".
func formatSI(v, step float64) string {
	a := math.Abs(v)
	scale, suffix := 1.0, ""
	for _, u := range siUnits {
		if a >= u.scale {
			scale, suffix = u.scale, u.suffix
			break
		}
	}
	return formatScaled(v, step, scale, suffix)
}

// formatScaled gives v in units of scale, named suffix, with as many
// decimals as a step of step needs; numbers too large or small for that
// get an exponent.
func formatScaled(v, step, scale float64, suffix string) string {
	a := math.Abs(v)
	if v == 0 {
		return "0"
	}
	if a >= 1e18 || a < 1e-4 || step/scale < 1e-6 {
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
	// As many decimals as the step has, in the unit: 0.2 needs one, a
	// binary axis's 0.25 two.
	dec := 0
	for f := step / scale; dec < 6 && step > 0 && math.Abs(f-math.Round(f)) > 1e-9*math.Max(1, f); f *= 10 {
		dec++
	}
	return trimZeros(strconv.FormatFloat(v/scale, 'f', dec, 64)) + suffix
}

func trimZeros(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

var binarySuffixes = []string{"", "K", "M", "G", "T", "P", "E"}

// formatPow2 labels 2^e as a byte count: 512, 8K, 64K, 1M, 4G.
func formatPow2(e float64) string {
	if e < 0 || e >= 70 {
		if e >= -10 && e < 0 {
			return strconv.FormatFloat(math.Pow(2, e), 'f', -1, 64)
		}
		return "2^" + strconv.Itoa(int(e))
	}
	n := int(e)
	return strconv.Itoa(1<<(n%10)) + binarySuffixes[n/10]
}

// formatPow10 labels 10^e: 1, 10, 100, 1K, 10M.
func formatPow10(e float64) string { return formatSI(math.Pow(10, e), math.Pow(10, e)) }

// human gives v to three significant figures (all the digits of an
// integer below 10000) with a suffix, in powers of 1024 for binary
// quantities: "117M", "64K", "1180", "0.912".
func human(v float64, binary bool) string {
	a := math.Abs(v)
	if v == 0 || !finite(v) {
		return strconv.FormatFloat(v, 'g', -1, 64)
	}
	if a >= 1e18 || a < 1e-4 {
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
	scale, suffix := 1.0, ""
	if binary {
		for i := len(binarySuffixes) - 1; i > 0; i-- {
			if s := math.Pow(1024, float64(i)); a >= s {
				scale, suffix = s, binarySuffixes[i]
				break
			}
		}
	} else {
		scale, suffix = siScale(a)
	}
	m := a / scale
	dec := max(0, min(2-int(math.Floor(math.Log10(m))), 6))
	return trimZeros(strconv.FormatFloat(v/scale, 'f', dec, 64)) + suffix
}

// exact gives v in full, without an exponent where one is not needed.
func exact(v float64) string {
	a := math.Abs(v)
	if a != 0 && (a >= 1e21 || a < 1e-6) {
		return strconv.FormatFloat(v, 'g', -1, 64)
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// exactAndHuman is a tooltip's value: exact, then rounded with a suffix
// when that reads differently, "65536 (64K)".
func exactAndHuman(v float64, binary bool) string {
	e, h := exact(v), human(v, binary)
	if e == h {
		return e
	}
	return e + " (" + h + ")"
}

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"num":    num,
	"half":   func(n int) int { return n / 2 },
	"minus1": func(n int) int { return n - 1 },
}).Parse(pageHTML))

// pageHTML is the page. Colours of the data are attributes of the SVG
// elements rather than CSS, so that a chart copied out of the page keeps
// them; the stylesheet only sets type, spacing and the muted greys.
const pageHTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="chunksync bench">
<title>{{.Title}}</title>
<style>
:root { color-scheme: light; --fg: #1f2328; --muted: #59636e; --rule: #d8dee4; --panel: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg); font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Liberation Sans", "DejaVu Sans", sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 36px 28px 72px; }
h1 { font-size: 28px; line-height: 1.2; margin: 0 0 8px; letter-spacing: -0.01em; overflow-wrap: anywhere; }
h2 { font-size: 20px; margin: 0 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--rule); overflow-wrap: anywhere; }
p { margin: 0 0 12px; white-space: pre-line; overflow-wrap: anywhere; }
.note { color: var(--muted); font-size: 14px; }
nav ol { display: flex; flex-wrap: wrap; gap: 4px 20px; list-style: none; margin: 16px 0 0; padding: 0; font-size: 14px; }
nav a { color: #0969da; text-decoration: none; }
nav a:hover { text-decoration: underline; }
section { margin-top: 44px; }
figure { margin: 20px 0 28px; padding: 16px 18px 10px; border: 1px solid var(--rule); border-radius: 10px; overflow-x: auto; }
figcaption { font-weight: 600; font-size: 16px; line-height: 1.3; overflow-wrap: anywhere; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 20px; list-style: none; margin: 8px 0 0; padding: 0; font-size: 13px; color: #31373d; }
.legend li { display: flex; align-items: center; gap: 7px; min-width: 0; }
.legend svg { flex: none; }
/* The drawing scales with the page, down to where its 12px text would
   shrink below 9px; narrower screens scroll it instead. */
svg.plot { display: block; width: 100%; min-width: 560px; height: auto; margin-top: 6px; }
svg.plot text { font-family: inherit; font-size: 12px; fill: var(--muted); }
svg.plot text.title { font-size: 13px; fill: #31373d; }
svg.plot text.value { font-size: 11px; fill: #31373d; }
svg.plot text.empty { font-size: 15px; }
.grid line, .axis line { stroke-width: 1; vector-effect: non-scaling-stroke; shape-rendering: crispEdges; }
.grid line { stroke: #e7ebef; }
.grid line.minor { stroke: #f2f4f6; }
.axis line { stroke: #8c959f; }
.axis line.zero { stroke: #59636e; }
rect.bar { shape-rendering: crispEdges; }
rect.bar:hover, path.marker:hover { opacity: 0.75; }
rect.bin:hover { fill-opacity: 0.55; }
.notes { margin: 6px 0 2px; padding-left: 18px; font-size: 13px; color: var(--muted); }
.table-wrap { overflow-x: auto; margin: 20px 0; border: 1px solid var(--rule); border-radius: 10px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; font-variant-numeric: tabular-nums; }
/* Cells keep to one line: a word or a profile broken over lines reads as
   several values. A wide table scrolls in its .table-wrap instead; only
   long free text wraps, at spaces, in a column wide enough to read. */
th, td { padding: 7px 12px; text-align: left; vertical-align: top; border-bottom: 1px solid var(--rule); white-space: nowrap; }
td.wrap { white-space: normal; min-width: 22em; }
th { background: var(--panel); font-weight: 600; }
tbody tr:last-child td { border-bottom: none; }
tbody tr:nth-child(even) { background: #fbfcfd; }
tbody tr:hover { background: #eef5fc; }
th.num, td.num { text-align: right; }
@media print { figure, .table-wrap { break-inside: avoid; } }
</style>
</head>
<body>
<main>
<header>
<h1>{{.Title}}</h1>
{{range .Note}}<p class="note">{{.}}</p>
{{end}}
{{- if .Nav}}<nav><ol>{{range .Sections}}<li><a href="#{{.ID}}">{{.NavLabel}}</a></li>{{end}}</ol></nav>{{end}}
</header>
{{range .Sections}}
<section id="{{.ID}}">
{{with .Heading}}<h2>{{.}}</h2>
{{end}}
{{- range .Paragraphs}}<p>{{.}}</p>
{{end}}
{{- range .Charts}}{{template "chart" .}}{{end}}
{{- with .Table}}{{template "table" .}}{{end}}
</section>
{{end}}
</main>
</body>
</html>
{{define "table"}}<div class="table-wrap"><table>
<thead><tr>{{range .Columns}}<th scope="col"{{if .Num}} class="num"{{end}}>{{.Text}}</th>{{end}}</tr></thead>
<tbody>
{{range .Rows}}<tr>{{range .}}<td{{if .Num}} class="num"{{else if .Wrap}} class="wrap"{{end}}>{{.Text}}</td>{{end}}</tr>
{{end}}</tbody>
</table></div>
{{end}}
{{define "key"}}<svg class="key" width="28" height="14" viewBox="0 0 28 14" aria-hidden="true">
{{- if eq .Kind "line"}}<line x1="1" y1="7" x2="27" y2="7" stroke="{{.Colour}}" stroke-width="2"{{with .Dash}} stroke-dasharray="{{.}}"{{end}}/><path d="{{.Marker}}" fill="{{.Colour}}" stroke="#fff" stroke-width="1"/>
{{- else if eq .Kind "bar"}}<rect x="7" y="0" width="14" height="14" rx="2" fill="{{.Colour}}"/>
{{- else}}<rect x="6" y="1" width="16" height="12" fill="{{.Colour}}" fill-opacity="0.3" stroke="{{.Colour}}" stroke-width="1.5"/>{{end -}}
</svg>{{end}}
{{define "chart"}}<figure class="chart {{.Kind}}">
{{with .Title}}<figcaption>{{.}}</figcaption>
{{end}}
{{- with .Legend}}<ul class="legend">{{range .}}<li{{with .Full}} title="{{.}}"{{end}}>{{template "key" .}}<span>{{.Name}}</span></li>{{end}}</ul>
{{end -}}
<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {{.W}} {{.H}}" role="img" aria-label="{{.Label}}">
{{- if .Empty}}
<rect class="frame" x="0.5" y="0.5" width="{{.W | minus1}}" height="{{.H | minus1}}" rx="6" fill="#fafbfc" stroke="#e7ebef"/>
<text class="empty" x="{{.W | half}}" y="{{.H | half}}" dy="5" text-anchor="middle">{{.Empty}}</text>
{{- else}}
<g class="grid">{{range .Grid}}<line{{if .Minor}} class="minor"{{end}} x1="{{num .X1}}" y1="{{num .Y1}}" x2="{{num .X2}}" y2="{{num .Y2}}"/>{{end}}</g>
{{- range $i, $s := .Series}}
<g class="series">
{{- if eq $.Kind "line"}}
{{- with .Path}}<path class="line" d="{{.}}" fill="none" stroke="{{$s.Colour}}" stroke-width="2.25" stroke-linejoin="round" stroke-linecap="round"{{with $s.Dash}} stroke-dasharray="{{.}}"{{end}}><title>{{$s.Name}}</title></path>{{end}}
{{- range .Markers}}<path class="marker" d="{{.D}}" fill="{{$s.Colour}}" stroke="#fff" stroke-width="1.25"><title>{{.Title}}</title></path>{{end}}
{{- else if eq $.Kind "bar"}}
{{- range .Rects}}<rect class="bar" x="{{num .X}}" y="{{num .Y}}" width="{{num .W}}" height="{{num .H}}" fill="{{$s.Colour}}"><title>{{.Title}}</title></rect>{{end}}
{{- range .Values}}<text class="value" x="{{num .X}}" y="{{num .Y}}" text-anchor="middle">{{.Text}}</text>{{end}}
{{- else}}
{{- range .Rects}}<rect class="bin" x="{{num .X}}" y="{{num .Y}}" width="{{num .W}}" height="{{num .H}}" fill="{{$s.Colour}}" fill-opacity="0.16"><title>{{.Title}}</title></rect>{{end}}
{{- end}}
</g>
{{- end}}
{{- /* Outlines over all the fills, so that no series hides another's shape. */}}
{{- if eq .Kind "histogram"}}
<g class="outlines">
{{- range $s := .Series}}{{with .Path}}<path class="outline" d="{{.}}" fill="none" stroke="{{$s.Colour}}" stroke-width="1.75" stroke-linejoin="round"{{with $s.Dash}} stroke-dasharray="{{.}}"{{end}}><title>{{$s.Name}}</title></path>{{end}}{{end}}
</g>
{{- end}}
<g class="axis">
{{- with .AxisY}}<line x1="{{num .X1}}" y1="{{num .Y1}}" x2="{{num .X2}}" y2="{{num .Y2}}"/>{{end}}
{{- with .AxisX}}<line x1="{{num .X1}}" y1="{{num .Y1}}" x2="{{num .X2}}" y2="{{num .Y2}}"/>{{end}}
{{- if .HasZero}}<line class="zero" x1="{{num .Plot.X}}" y1="{{num .ZeroY}}" x2="{{num .PlotRight}}" y2="{{num .ZeroY}}"/>{{end}}
{{- range .XTicks}}{{with .Mark}}<line x1="{{num .X1}}" y1="{{num .Y1}}" x2="{{num .X2}}" y2="{{num .Y2}}"/>{{end}}{{end}}
{{- range .YTicks}}{{with .Mark}}<line x1="{{num .X1}}" y1="{{num .Y1}}" x2="{{num .X2}}" y2="{{num .Y2}}"/>{{end}}{{end}}
</g>
<g class="ticks">
{{- range .XTicks}}<text x="{{num .X}}" y="{{num .Y}}" text-anchor="{{.Anchor}}"{{if .Rotate}} transform="rotate(-40 {{num .X}} {{num .Y}})"{{end}}>{{.Text}}{{with .Full}}<title>{{.}}</title>{{end}}</text>{{end}}
{{- range .YTicks}}<text x="{{num .X}}" y="{{num .Y}}" text-anchor="{{.Anchor}}">{{.Text}}</text>{{end}}
</g>
{{- with .XLabel}}{{if .Text}}
<text class="title" x="{{num .X}}" y="{{num .Y}}" text-anchor="middle">{{.Text}}{{with .Full}}<title>{{.}}</title>{{end}}</text>{{end}}{{end}}
{{- with .YLabel}}{{if .Text}}
<text class="title" x="{{num .X}}" y="{{num .Y}}" text-anchor="middle" transform="rotate(-90 {{num .X}} {{num .Y}})">{{.Text}}{{with .Full}}<title>{{.}}</title>{{end}}</text>{{end}}{{end}}
{{- end}}
</svg>
{{with .Notes}}<ul class="notes">{{range .}}<li>{{.}}</li>{{end}}</ul>
{{end -}}
</figure>
{{end}}`
