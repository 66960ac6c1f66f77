package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// TransferProfile is an emulated path between client and server: both
// directions get Rate, half of RTT and Loss, random or, when Burst is above
// 1, in bursts of Burst datagrams on average (Gilbert–Elliott).
type TransferProfile struct {
	// Rate is in bits per second; 0 is no limit.
	Rate  int64
	RTT   time.Duration
	Loss  float64
	Burst float64
}

// String names the profile the way the command line gives it, such as
// "200mbit 20ms 1%" or "200mbit 20ms 5% burst 4"; "off" is no rate limit.
func (p TransferProfile) String() string {
	s := fmt.Sprintf("%s %v %s", formatBits(p.Rate), p.RTT, strconv.FormatFloat(100*p.Loss, 'g', 4, 64)+"%")
	if p.Burst > 1 {
		s += " burst " + strconv.FormatFloat(p.Burst, 'g', 4, 64)
	}
	return s
}

// result starts the result of a transfer of size bytes by tool over p.
func (p TransferProfile) result(tool string, size int64) TransferResult {
	return TransferResult{
		Tool: tool, Profile: p.String(), RateBits: p.Rate, RTTMillis: float64(p.RTT) / float64(time.Millisecond),
		Loss: p.Loss, Burst: p.Burst, Size: size,
	}
}

// formatBits gives a rate in bits per second as the command line takes it:
// "200mbit", "1gbit", "512kbit", or "off" for 0, no limit.
func formatBits(bps int64) string {
	if bps == 0 {
		return "off"
	}
	for _, u := range []struct {
		name string
		n    int64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}} {
		if bps >= u.n && bps%u.n == 0 {
			return strconv.FormatInt(bps/u.n, 10) + u.name
		}
	}
	return strconv.FormatInt(bps, 10) + "bit"
}

// Link returns the link emulator's configuration for the profile.
func (p TransferProfile) Link(seed uint64) (LinkConfig, error) {
	dir := LinkProfile{Rate: p.Rate, Delay: p.RTT / 2}
	if p.Burst > 1 && p.Loss > 0 {
		ge, err := BurstLoss(p.Loss, p.Burst)
		if err != nil {
			return LinkConfig{}, fmt.Errorf("profile %s: %w", p, err)
		}
		dir.Burst = ge
	} else {
		dir.Loss = p.Loss
	}
	cfg := LinkConfig{Up: dir, Down: dir, Seed: seed}
	if dir.Burst != nil {
		// Each direction its own model: they share the parameters, not
		// the state.
		down := *dir.Burst
		cfg.Down.Burst = &down
	}
	if err := cfg.Validate(); err != nil {
		return LinkConfig{}, fmt.Errorf("profile %s: %w", p, err)
	}
	return cfg, nil
}

// TransferSpec is one chunksync transfer benchmark run: File pushed to a new
// server through a link emulator with Profile, and pulled back when Pull is
// set.
type TransferSpec struct {
	File    string
	Profile TransferProfile
	Chunker engine.ChunkerParams
	// Streams is the number of parallel data streams (0: the client's
	// default), Conns the connections they are spread over (0: the
	// client decides from the link, see transport.ClientConfig.Conns).
	Streams int
	Conns   int
	// FEC says when the client runs its data streams over forward error
	// correction, to the server's FEC port through the same link.
	FEC  transport.FECMode
	Pull bool
	// Timeout bounds each of push and pull; a run that hits it is
	// reported incomplete, with the goodput of what it moved. 0 is no
	// bound.
	Timeout time.Duration
	// Seed seeds the link's random decisions.
	Seed uint64
	// Progress, when not nil, receives the transfers' progress.
	Progress engine.Progress
}

// TransferResult is what one transfer (one direction of one run) measured.
type TransferResult struct {
	// Tool is "chunksync" or one of TCPTools; Direction "push" or
	// "pull".
	Tool      string `json:"tool"`
	Direction string `json:"direction"`
	// Profile names the link; RateBits (0 for no limit), RTTMillis, Loss
	// and Burst are its settings.
	Profile   string  `json:"profile"`
	RateBits  int64   `json:"rate_bits"`
	RTTMillis float64 `json:"rtt_ms"`
	Loss      float64 `json:"loss"`
	Burst     float64 `json:"burst,omitempty"`
	// Chunker is how chunksync cut the file, with every parameter; empty
	// for the TCP tools.
	Chunker string `json:"chunker,omitempty"`
	Streams int    `json:"streams,omitempty"`
	// Conns is the number of connections asked for (0: automatic);
	// Connections the number the client made.
	Conns       int `json:"conns"`
	Connections int `json:"connections,omitempty"`
	// FEC is the FEC mode asked for ("auto", "on", "off"; empty for
	// the TCP tools); FECConnections how many of the connections went to the
	// FEC port.
	FEC            string `json:"fec,omitempty"`
	FECConnections int    `json:"fec_connections,omitempty"`
	// Size is the file's size; Moved the bytes of it that arrived (Size
	// when Complete).
	Size  int64 `json:"size"`
	Moved int64 `json:"moved"`
	// Seconds is the transfer's time from the first datagram (or TCP
	// connection) to the verified end.
	Seconds float64 `json:"seconds"`
	// GoodputMbit is Moved in megabits over Seconds.
	GoodputMbit float64 `json:"goodput_mbit"`
	// WireBytesSent and WireBytesReceived are the client's bytes on the
	// wire: UDP payload for chunksync (QUIC and TLS included), the TCP
	// stream for the TCP tools (without headers and retransmissions).
	WireBytesSent     uint64 `json:"wire_bytes_sent"`
	WireBytesReceived uint64 `json:"wire_bytes_received"`
	// CPUSeconds is the CPU time (user and system) the transfer cost:
	// for chunksync and tcp that of this process, which runs both ends
	// and the link emulator; for rsync that of its client and daemon.
	CPUSeconds float64 `json:"cpu_seconds"`
	// DatagramsLost counts what the emulator dropped, both directions:
	// UDP datagrams for chunksync, IP packets for the TCP tools.
	DatagramsLost uint64 `json:"datagrams_lost"`
	// Complete says the transfer finished and its result was verified;
	// Error says why not.
	Complete bool   `json:"complete"`
	Error    string `json:"error,omitempty"`
}

// transferEnv is what the runs of one TransferSpec share: a new server and
// the link emulator in front of it, in front of its FEC port too.
type transferEnv struct {
	srv     *transport.Server
	link    *Link
	fecAddr net.Addr // the link's port in front of the server's FEC port
	token   string
	dir     string
}

// startTransferEnv starts a server with its data in a new directory under
// work and a link with profile p in front of it; stop ends both and waits
// for them.
func startTransferEnv(ctx context.Context, work string, p TransferProfile, seed uint64) (env *transferEnv, stop func(), err error) {
	dir, err := os.MkdirTemp(work, "server-")
	if err != nil {
		return nil, nil, fmt.Errorf("transfer: %w", err)
	}
	token, err := transport.NewToken(dir, "bench")
	if err != nil {
		return nil, nil, fmt.Errorf("transfer: %w", err)
	}
	srv, err := transport.NewServer(transport.ServerConfig{
		DataDir: dir, Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("transfer: %w", err)
	}
	cfg, err := p.Link(seed)
	if err == nil {
		env = &transferEnv{srv: srv, token: token, dir: dir}
		env.link, err = ListenLink("127.0.0.1:0", srv.Addr().String(), cfg)
	}
	if err == nil {
		// The FEC port's datagrams share the link with the others, as
		// they share the path.
		env.fecAddr, err = env.link.AddPort("127.0.0.1:0", srv.FECAddr().String())
	}
	if err != nil {
		srv.Close()
		return nil, nil, fmt.Errorf("transfer: %w", err)
	}
	restore := addMemoryLimit(srv.MemoryLimit() + linkMemory)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ctx) })
	wg.Go(func() { env.link.Serve(ctx) })
	return env, func() {
		cancel()
		wg.Wait()
		srv.Close()
		os.RemoveAll(dir)
		restore()
	}, nil
}

// linkMemory is room for the datagrams the link holds: through 400
// Mbit/s, a 200 ms round trip and a 50 ms queue, about 15 MB.
const linkMemory = 64 << 20

// addMemoryLimit raises the process's soft memory limit, when it has one,
// by n bytes, and returns what restores it. The benchmark runs the server
// and the link in the client's process: under the client's limit alone
// (160 MiB in the chunksync binary) the collector ran without pause, and a
// push through 400 Mbit/s, 200 ms took 27–29 CPU seconds and 18–19 s where it
// takes 16 and 15.3.
func addMemoryLimit(n int64) (restore func()) {
	prev := debug.SetMemoryLimit(-1)
	if prev == math.MaxInt64 {
		return func() {}
	}
	debug.SetMemoryLimit(prev + n)
	return func() { debug.SetMemoryLimit(prev) }
}

// dial connects a new client to the server through the link.
func (e *transferEnv) dial(ctx context.Context, spec TransferSpec) (*transport.Client, error) {
	return transport.Dial(ctx, transport.ClientConfig{
		Addr: e.link.Addr().String(), Token: e.token, Fingerprint: e.srv.Fingerprint(),
		Streams: spec.Streams, Conns: spec.Conns, FEC: spec.FEC, FECAddr: e.fecAddr.String(),
	})
}

// lost is what the link dropped so far, both ways.
func (e *transferEnv) lost() uint64 {
	up, down := e.link.Stats()
	return up.DroppedLoss + up.DroppedQueue + down.DroppedLoss + down.DroppedQueue
}

// RunTransfer pushes spec.File to a new server through an emulated link
// and, with spec.Pull, pulls it back to a new file under work, which must
// exist. It returns one result per direction; an error only when the run
// could not be set up. A transfer that fails or times out is a result
// with Complete false.
func RunTransfer(ctx context.Context, work string, spec TransferSpec) ([]TransferResult, error) {
	fi, err := os.Stat(spec.File)
	if err != nil {
		return nil, fmt.Errorf("transfer: %w", err)
	}
	env, stop, err := startTransferEnv(ctx, work, spec.Profile, spec.Seed)
	if err != nil {
		return nil, err
	}
	defer stop()
	base := spec.Profile.result("chunksync", fi.Size())
	base.Chunker, base.Streams, base.Conns, base.FEC = spec.Chunker.String(), spec.Streams, spec.Conns, spec.FEC.String()
	remote := filepath.Base(spec.File)
	push := base
	push.Direction = "push"
	var m *engine.Manifest
	measureTransfer(ctx, &push, env, spec, func(ctx context.Context, c *transport.Client, p engine.Progress) error {
		res, err := engine.Push(ctx, c, spec.File, remote, engine.PushOptions{Chunker: spec.Chunker, Progress: p})
		m = res.Manifest
		return err
	}, engine.StageStored, engine.StagePresent)
	results := []TransferResult{push}
	if !spec.Pull || !push.Complete {
		return results, nil
	}
	pull := base
	pull.Direction = "pull"
	dst := filepath.Join(env.dir, "pulled")
	measureTransfer(ctx, &pull, env, spec, func(ctx context.Context, c *transport.Client, p engine.Progress) error {
		_, err := engine.Pull(ctx, c, m, dst, engine.PullOptions{Progress: p})
		return err
	}, engine.StageFetched, engine.StageReused)
	return append(results, pull), nil
}

// measureTransfer runs one transfer on a new client and fills in r: time, goodput,
// wire bytes, CPU and losses. The bytes of the stages moved count as
// arrived, for the goodput of a transfer that did not finish.
func measureTransfer(ctx context.Context, r *TransferResult, env *transferEnv, spec TransferSpec, run func(context.Context, *transport.Client, engine.Progress) error, moved ...engine.Stage) {
	if spec.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, spec.Timeout)
		defer cancel()
	}
	counter := &stageCounter{next: spec.Progress, count: moved}
	lost := env.lost()
	cpu := processCPU()
	start := time.Now()
	c, err := env.dial(ctx, spec)
	if err == nil {
		err = run(ctx, c, counter)
		c.Close()
		wire := c.Stats()
		r.WireBytesSent, r.WireBytesReceived, r.Connections, r.FECConnections = wire.BytesSent, wire.BytesReceived, wire.Connections, wire.FECConnections
	}
	r.Seconds = time.Since(start).Seconds()
	r.CPUSeconds = (processCPU() - cpu).Seconds()
	r.DatagramsLost = env.lost() - lost
	r.Moved = counter.bytes.Load()
	r.Complete = err == nil
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("timed out after %v", spec.Timeout)
		}
		r.Error = err.Error()
	}
	r.GoodputMbit = goodput(r.Moved, r.Seconds)
}

// goodput is n bytes over seconds, in megabits per second.
func goodput(n int64, seconds float64) float64 {
	if seconds <= 0 {
		return 0
	}
	return float64(n) * 8 / seconds / 1e6
}

// stageCounter passes progress on to next and adds up the bytes of the
// stages in count.
type stageCounter struct {
	next  engine.Progress
	count []engine.Stage
	bytes atomic.Int64
}

func (s *stageCounter) Add(stage engine.Stage, n int64) {
	for _, c := range s.count {
		if c == stage {
			s.bytes.Add(n)
		}
	}
	if s.next != nil {
		s.next.Add(stage, n)
	}
}

// processCPU is the user and system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// childrenCPU is the user and system CPU time of the child processes this
// process has waited for so far.
func childrenCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TransferReport shows transfer results: a table of every transfer, the
// comparison with the TCP tools on the profiles both ran, goodput against
// the loss rate for each configuration, and goodput per profile.
func TransferReport(results []TransferResult) Report {
	rep := Report{Title: "Transfers through emulated links", Note: Machine()}
	all := &Table{Columns: []string{"tool", "direction", "profile", "chunker", "streams", "connections", "fec", "size", "seconds", "goodput Mbit/s", "sent", "received", "CPU s", "lost", "result"}}
	for _, r := range results {
		result := "verified"
		if !r.Complete {
			result = "incomplete: " + r.Error
		}
		streams, conns, fec := "-", "-", "-"
		if r.Tool == "chunksync" {
			streams, conns, fec = strconv.Itoa(r.Streams), connsName(r), fecName(r)
		}
		all.Rows = append(all.Rows, []string{
			r.Tool, r.Direction, r.Profile, orDash(chunkerName(r.Chunker)), streams, conns, fec, formatSize(r.Size),
			fmt.Sprintf("%.2f", r.Seconds), fmt.Sprintf("%.1f", r.GoodputMbit),
			formatSize(int64(r.WireBytesSent)), formatSize(int64(r.WireBytesReceived)),
			fmt.Sprintf("%.2f", r.CPUSeconds), strconv.FormatUint(r.DatagramsLost, 10), result,
		})
	}
	// Goodput per profile, a bar per configuration and direction; and
	// against the loss rate, a line per configuration, direction and
	// path (rate and round trip).
	// Goodput spans decades between a clean gigabit and a lossy link:
	// both charts are logarithmic in it.
	perProfile := Chart{Kind: ChartBar, Title: "Goodput per link", YLabel: "Mbit/s", LogY: true}
	vsLoss := Chart{Kind: ChartLine, Title: "Goodput against loss", XLabel: "packets lost each way (%)", YLabel: "Mbit/s", LogY: true}
	bars := map[string]int{}
	lines := map[string]int{}
	for _, r := range results {
		config := r.Tool + " " + r.Direction
		if r.Tool == "chunksync" {
			conns := "auto conns"
			if r.Conns > 0 {
				conns = fmt.Sprintf("%d conns", r.Conns)
			}
			config = fmt.Sprintf("%s %s ×%d, %s, fec %s", r.Direction, chunkerName(r.Chunker), r.Streams, conns, r.FEC)
		}
		i, ok := bars[config]
		if !ok {
			i = len(perProfile.Series)
			bars[config] = i
			perProfile.Series = append(perProfile.Series, Series{Name: config})
		}
		perProfile.Series[i].Points = append(perProfile.Series[i].Points, Point{Label: r.Profile, Y: r.GoodputMbit})
		if r.Burst > 1 {
			continue
		}
		line := fmt.Sprintf("%s, %s %gms", config, formatBits(r.RateBits), r.RTTMillis)
		j, ok := lines[line]
		if !ok {
			j = len(vsLoss.Series)
			lines[line] = j
			vsLoss.Series = append(vsLoss.Series, Series{Name: line})
		}
		vsLoss.Series[j].Points = append(vsLoss.Series[j].Points, Point{X: 100 * r.Loss, Y: r.GoodputMbit})
	}
	charts := []Chart{perProfile}
	for _, s := range vsLoss.Series {
		if len(s.Points) > 1 {
			charts = append(charts, vsLoss)
			break
		}
	}
	rep.Sections = append(rep.Sections, Section{
		Heading: "Transfers",
		Text: "Each file pushed to a new, empty server through the emulated link, then pulled back to a new file, and both verified. " +
			"chunksync crosses the UDP link emulator; the TCP tools (tcp: one TCP connection carrying the file and nothing else; rsync: rsync -z " +
			"against a daemon; -bbr: with BBR instead of CUBIC) cross an IP-level link between two network namespaces, through TUN devices, " +
			"that drops, queues and delays each packet as the UDP one does. " +
			"Goodput is the file's bits over the transfer's time, connection included; a transfer cut short by the timeout counts what arrived. " +
			"Wire bytes are the client's: UDP payload for chunksync, the TCP stream for the TCP tools. Lost counts the datagrams or IP packets " +
			"the link dropped, both ways. The CPU time of chunksync and tcp is that of the benchmark process, which runs both ends and the emulator; " +
			"rsync's is its client's and daemon's.",
		Charts: charts,
		Table:  all,
	})
	if cmp := tcpComparison(results); cmp != nil {
		rep.Sections = append(rep.Sections, Section{
			Heading: "Compared with TCP",
			Text: "chunksync's goodput next to each TCP tool's on the same file, direction and link, and their ratio: above 1 where chunksync is faster. " +
				"A goodput marked * is that of a transfer the timeout cut short.",
			Table: cmp,
		})
	}
	return rep
}

// tcpComparison pairs every chunksync transfer with the TCP tools' of the
// same file, direction and profile; nil when there is none.
func tcpComparison(results []TransferResult) *Table {
	type key struct {
		tool, direction, profile string
		size                     int64
	}
	tcp := map[key]TransferResult{}
	var tools []string
	for _, r := range results {
		if r.Tool != "chunksync" {
			tcp[key{r.Tool, r.Direction, r.Profile, r.Size}] = r
		}
	}
	for _, tool := range TCPTools {
		for k := range tcp {
			if k.tool == tool {
				tools = append(tools, tool)
				break
			}
		}
	}
	t := &Table{Columns: []string{"direction", "profile", "chunker", "streams", "connections", "goodput Mbit/s"}}
	for _, tool := range tools {
		t.Columns = append(t.Columns, tool+" Mbit/s", "ratio to "+tool)
	}
	goodput := func(r TransferResult) string {
		s := fmt.Sprintf("%.1f", r.GoodputMbit)
		if !r.Complete {
			s += "*"
		}
		return s
	}
	for _, r := range results {
		if r.Tool != "chunksync" {
			continue
		}
		row := []string{r.Direction, r.Profile, chunkerName(r.Chunker), strconv.Itoa(r.Streams), connsName(r), goodput(r)}
		paired := false
		for _, tool := range tools {
			o, ok := tcp[key{tool, r.Direction, r.Profile, r.Size}]
			if !ok {
				row = append(row, "-", "-")
				continue
			}
			paired = true
			ratio := "-"
			if o.GoodputMbit > 0 {
				ratio = fmt.Sprintf("%.2f", r.GoodputMbit/o.GoodputMbit)
			}
			row = append(row, goodput(o), ratio)
		}
		if paired {
			t.Rows = append(t.Rows, row)
		}
	}
	if len(t.Rows) == 0 {
		return nil
	}
	return t
}

// chunkerName is the name of the chunker a result's Chunker describes with
// all its parameters: the tables have no room for them, and bench transfer
// runs every chunker with its defaults.
func chunkerName(params string) string {
	name, _, _ := strings.Cut(params, "(")
	return name
}

// connsName says how many connections a chunksync transfer asked for and
// made: "4", or "auto: 1" when the client decided.
func connsName(r TransferResult) string {
	if r.Conns == 0 {
		return fmt.Sprintf("auto: %d", r.Connections)
	}
	return strconv.Itoa(r.Connections)
}

// fecName says whether a chunksync transfer used FEC, and how many of its
// connections did: "off", "on: 1", "auto: 0".
func fecName(r TransferResult) string {
	if r.FEC == transport.FECOff.String() {
		return r.FEC
	}
	return fmt.Sprintf("%s: %d", r.FEC, r.FECConnections)
}

// orDash gives s, or "-" for nothing.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
