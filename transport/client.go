package transport

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// ErrUnreachable is wrapped by the client's error when no connection to the
// server could be made (or re-made within ClientConfig.RetryFor).
var ErrUnreachable = errors.New("server unreachable")

// ServerError is a request the server refused, with its reason.
type ServerError struct {
	Status byte
	Msg    string
}

func (e *ServerError) Error() string { return "server: " + e.Msg }

// ClientConfig configures a Client. Addr and Token are required, and either
// Fingerprint or KnownServers.
type ClientConfig struct {
	// Addr is the server's UDP address, host:port.
	Addr  string
	Token string
	// Fingerprint pins the server's identity ("sha256:…").
	Fingerprint string
	// KnownServers, when Fingerprint is empty, is the file that remembers
	// server identities: an unknown server is trusted on first use, a
	// changed one is refused.
	KnownServers string
	// Streams is the number of parallel data streams of an upload; default
	// 8. An upload opens fewer when the server allows fewer (see
	// Client.dataStreams).
	Streams int
	// Conns is the number of QUIC connections the data streams of an
	// upload or a fetch are spread over, at most Streams. Each connection
	// has its own congestion window, which quic-go halves at every loss:
	// on a lossy link N connections carry about N times what one does.
	// 0 (the default) decides from the link: an upload uses one
	// connection until it has lost more than lossyLink of its packets,
	// then one per data stream, and one per data stream from the start
	// when it is bulk (bulkUpload) and the path long (longRTT); a fetch,
	// whose losses happen at the server, uses one per data stream from
	// the start.
	Conns int
	// FEC says when the data streams run over forward error correction
	// (FECConn), on connections to the FEC port the server advertises:
	// FECAuto (the default) once the link loses packets that FEC can
	// repair, FECOn from the start, FECOff never. Control requests
	// always use the plain connection.
	FEC FECMode
	// FECAddr, when set, is where the server's FEC port is reached, for
	// a server behind a relay or port forwarding; by default it is the
	// server's address with the port its hello reply advertises.
	FECAddr string
	// BWLimit caps the rate of chunk data sent and received, in bytes per
	// second, both directions together; 0 is no limit.
	BWLimit int64
	// DialTimeout bounds one connection attempt; default 10s.
	DialTimeout time.Duration
	// RetryFor is how long a dropped connection is re-dialled (with
	// exponential backoff) before the client gives up; default 2m.
	RetryFor time.Duration
	// CacheDir, when set, is where the client remembers the manifest of
	// the version it last pushed or fetched of each path, per server, so
	// that re-syncs send chunk lists as deltas against it.
	CacheDir string
}

// WireStats count UDP payload bytes, QUIC and TLS overhead included, over
// every connection the client made; for connections over FEC, every byte
// of the client's FECConn, framing, parity and loss reports included.
type WireStats struct {
	BytesSent, BytesReceived uint64
	// Connections is the number of connections made, 1 without drops;
	// FECConnections the number of them made to the FEC port.
	Connections, FECConnections int
	// Requests is the number of control requests sent, each a round
	// trip (repeats after a dropped connection included), but not those
	// that went behind a hello the server refused.
	Requests int
}

// FECMode says when a client's data streams run over forward error
// correction; see ClientConfig.FEC.
type FECMode int

const (
	// FECAuto moves the data streams to the FEC port once the
	// connection that carries them loses packets and FEC can repair
	// them (see Client.watchLoss).
	FECAuto FECMode = iota
	// FECOn runs the data streams over FEC from the start; Dial fails
	// when the server offers no FEC port.
	FECOn
	// FECOff never uses FEC.
	FECOff
)

// fecModes are the names of the modes, as ParseFECMode reads them.
var fecModes = [...]string{FECAuto: "auto", FECOn: "on", FECOff: "off"}

func (m FECMode) String() string {
	if m >= 0 && int(m) < len(fecModes) {
		return fecModes[m]
	}
	return fmt.Sprintf("FECMode(%d)", int(m))
}

// ParseFECMode reads "auto", "on" or "off".
func ParseFECMode(s string) (FECMode, error) {
	for m, name := range fecModes {
		if s == name {
			return FECMode(m), nil
		}
	}
	return 0, fmt.Errorf("fec mode %q: want auto, on or off", s)
}

// ErrNoFEC is wrapped by Dial's error when the client was told to use FEC
// (FECOn) and the server offers no FEC port.
var ErrNoFEC = errors.New("server offers no FEC port")

// Client talks to one chunksync server. It implements engine.Remote and is
// safe for concurrent use.
type Client struct {
	cfg     ClientConfig
	limiter *rate.Limiter
	cache   manifestCache
	// fp is the fingerprint of the server's certificate, from the first
	// connection; later connections must show the same one.
	fp atomic.Pointer[string]

	// slots are the connections: slot 0 carries the control requests and
	// data streams, the others data streams only (see slotFor). The
	// first plain slots are plain QUIC to the server's address, the
	// others their counterparts over FEC to its FEC port.
	slots   []*connSlot
	plain   int
	mu      sync.Mutex // guards the slots' conn and gen, gen and closed
	gen     int        // of the last connection made
	closed  WireStats  // of plain connections no longer in use
	refused atomic.Pointer[error]
	// spread is how many slots the data streams use now: Conns, or in
	// automatic mode 1 until the link shows loss.
	spread atomic.Int32
	// fecOn says the data streams use the FEC slots.
	fecOn atomic.Bool
	// placeMu guards placed, which ends when the data streams move to
	// other slots (spread or fecOn change), and unplace, which ends it.
	placeMu sync.Mutex
	placed  context.Context
	unplace context.CancelFunc
	// maxStreams is the server's bound on the concurrent streams of one
	// connection, from the last hello reply.
	maxStreams atomic.Uint32
	// requests counts the control requests sent (WireStats.Requests).
	requests atomic.Int64
	// earlyRefused says the reply to a hello not waited for (see
	// connection) refused it: from then on every dial waits for its
	// hello.
	earlyRefused atomic.Bool
	// hellos runs the reads of those replies; each ends within the dial
	// timeout, and Close waits for them.
	hellos sync.WaitGroup
	// version is the protocol version the client says hello in:
	// ProtocolVersion until a server refuses it.
	version atomic.Uint32
	// fecAddr is where FEC connections go, nil while no hello has
	// advertised a FEC port, and with FECOff.
	fecAddr atomic.Pointer[net.UDPAddr]
	// fecFailed says a connection to the FEC port failed in automatic
	// mode: the client stays on plain QUIC.
	fecFailed atomic.Bool

	// fecMu guards fec and fecTr, the client's FECConn and the QUIC
	// transport over it that all FEC slots share, made on the first
	// dial to the FEC port.
	fecMu sync.Mutex
	fec   *FECConn
	fecTr *quic.Transport

	// heartbeats runs sendHeartbeats for the connections made; each ends
	// with its connection, and Close waits for them.
	heartbeats sync.WaitGroup
}

// connSlot is one of the client's connections, redialled when it drops.
type connSlot struct {
	dialMu sync.Mutex // held by the one goroutine dialling the slot
	conn   *quic.Conn
	gen    int
	// hello is conn's hello when its reply was not waited for.
	hello *pendingHello
	// silentSince is when the server was last heard from on the slot's
	// last connection, as far as the client knows, once it dropped.
	silentSince time.Time
}

// idleTimeout is how long a connection may hear nothing from the server
// before quic-go gives it up; the client then re-dials for RetryFor. The
// server's keep-alives are not needed: the client sends its own.
const idleTimeout = 20 * time.Second

// heartbeatPeriod is how often a connection sends a heartbeat while
// nothing arrives from the server (see sendHeartbeats).
const heartbeatPeriod = time.Second

// heartbeatSize is the payload of a heartbeat datagram. The content means
// nothing; the size makes the packet larger than the 42 bytes
// (protocol.MinStatelessResetSize) below which quic-go answers no packet
// with a stateless reset, whatever the length of the connection ID: the
// packet adds a byte of header, the connection ID, 1 to 4 bytes of packet
// number, the frame's type and length and 16 bytes of AEAD tag.
const heartbeatSize = 32

// sendHeartbeats sends a heartbeat, a DATAGRAM frame that the server
// discards, on conn every heartbeatPeriod in which nothing arrived from
// the server, until conn closes. A client that waits for a reply sends
// only keep-alive PINGs, smaller than any packet a server answers with a
// stateless reset: when its server crashes and restarts on the same
// address, such a client would notice only at its idle timeout, 20 s on.
// The restarted server answers a heartbeat with a reset (its reset key is
// its predecessor's, see statelessResetKey), so the client re-dials
// within about heartbeatPeriod. While chunks or replies arrive, nothing
// is sent.
func sendHeartbeats(conn *quic.Conn) {
	t := time.NewTicker(heartbeatPeriod)
	defer t.Stop()
	var beat [heartbeatSize]byte
	var received uint64
	for {
		select {
		case <-conn.Context().Done():
			return
		case <-t.C:
		}
		if n := conn.ConnectionStats().PacketsReceived; n != received {
			received = n
			continue
		}
		// It fails only once conn is closing, which ends the loop.
		conn.SendDatagram(beat[:])
	}
}

// lossyLink is the share of its packets the first connection must lose
// before automatic mode spreads the data streams over a connection each.
// A clean path loses none; at 0.5% one quic-go connection already carries
// a tenth of what it carries without loss.
const lossyLink = 0.005

// lossSample is how many packets a connection must have sent before its
// losses say anything about the link.
const lossSample = 500

// bulkUpload is the size from which a file's upload counts as bulk: a
// bulk upload of a file the server holds no version of dials its data
// connections while the session opens, and one through a long path
// (longPath) spreads its data streams from the start in automatic mode.
const bulkUpload = 64 << 20

// longRTT is the round trip from which a path counts as long. quic-go's
// NewReno takes a loss as congestion, shrinks its window to 0.7 of it and
// grows it back by one packet a round trip: through 400 Mbit/s and 200 ms
// one connection takes minutes to regain its window, and a single loss
// from the queue that slow start overfills holds a push at 90 Mbit/s
// where sixteen connections carry 230. Through 50 ms at 100 Mbit/s the
// same loss costs one connection about 8 s.
const longRTT = 50 * time.Millisecond

// longPath reports whether the first connection's round trip is longRTT
// or more.
func (c *Client) longPath() bool {
	conn, _ := c.live(0)
	return conn != nil && conn.ConnectionStats().MinRTT >= longRTT
}

// slotFor returns the slot of upload data stream i: the streams take the
// slots in use in turn, over FEC once it is on.
func (c *Client) slotFor(i int) int { return c.dataSlots() + i%int(c.spread.Load()) }

// fetchSlot returns the slot of fetch stream i: a fetch spreads its
// streams over every plain slot (see fetchGroup), and, over FEC, takes the
// slots in use as an upload does.
func (c *Client) fetchSlot(i int) int {
	if c.fecOn.Load() {
		return c.slotFor(i)
	}
	return i % c.plain
}

// placement returns a context that ends when the data streams next move to
// other slots. A stream takes it before its slot, and stops when it ends
// and its slot changed: draining a chunk through a connection that loses
// 5% of its packets takes seconds.
func (c *Client) placement() context.Context {
	c.placeMu.Lock()
	defer c.placeMu.Unlock()
	return c.placed
}

// move makes the change to spread or fecOn that move does, and tells the
// streams.
func (c *Client) move(change func()) {
	c.placeMu.Lock()
	defer c.placeMu.Unlock()
	change()
	c.unplace()
	c.placed, c.unplace = context.WithCancel(context.Background())
}

// dataSlots is the first slot of the data streams: the plain ones or their
// FEC counterparts.
func (c *Client) dataSlots() int {
	if c.fecOn.Load() {
		return c.plain
	}
	return 0
}

// watchLoss, in the automatic modes, moves the data streams of a transfer
// as the link shows loss. Once the connection of data stream 0 has lost
// more than lossyLink of its packets, it moves the streams to one
// connection to the FEC port if random loss holds that connection back
// (lossLimited), and otherwise spreads them over a connection each. Over
// FEC, it spreads them once the loss that FEC leaves (and the losses
// QUIC declares of datagrams that FEC rebuilt too late) still holds the
// connection back: at 5% loss, one connection over FEC saw QUIC declare
// 0.03 to 0.1% of its packets lost, which keeps NewReno at a few tens of
// Mbit/s through 20 ms. It returns once
// nothing is left to decide, or when ctx ends. Uploads and fetches run it
// beside their streams; a fetch passes remote, for the loss of the chunks
// it receives is only known to the server, which it asks.
//
// Through the emulated 200 Mbit/s, 20 ms link at 1% loss, one connection
// over FEC pushed 138 Mbit/s and pulled 163, eight over FEC 92 and 94
// (their parity and their eight windows overflow the link's queue), and
// eight plain ones 41 and 57; at 5% one over FEC pushed 131 and pulled 91
// (51 and 58 in automatic mode), eight 136 and 141.
func (c *Client) watchLoss(ctx context.Context, remote bool) {
	// Each look of a fetch is a request.
	t := time.NewTicker(lossLook)
	defer t.Stop()
	var seen lossSeries
	for c.undecided(remote) {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		conn, _ := c.live(c.slotFor(0))
		if conn == nil {
			continue
		}
		st := conn.ConnectionStats()
		if remote {
			var err error
			if st, err = c.serverLoss(ctx, conn); err != nil {
				// The transfer's streams see what went wrong and say it.
				continue
			}
		}
		random := seen.random(conn, st)
		fec := c.fecOn.Load()
		switch {
		case !fec && !lossy(st):
		case c.fecWanted() && seen.lossLooks < lossSpread:
			// Too early to tell whether FEC would help.
		case c.fecWanted() && random && lossLimited(st) && c.startFEC(ctx):
		case c.cfg.Conns != 0:
		case !fec && !remote, fec && random && st.PacketsSent >= lossSample && lossLimited(st):
			c.move(func() { c.spread.Store(int32(c.plain)) })
		}
	}
}

// lossLook is how often watchLoss looks at the counts of a connection.
const lossLook = 100 * time.Millisecond

// queueDelay is the swelling of the round trip that shows a queue on
// any path longer than it.
const queueDelay = 15 * time.Millisecond

// lossSpread is how many of watchLoss's looks at a connection must find
// new losses before they count as spread out in time, as random losses
// are.
const lossSpread = 5

// lossSeries follows the losses and the round trip of the connection
// watchLoss looks at, to tell random losses, which parity and more
// connections help against, from those of a queue that overflows, which
// they do not help against: more datagrams only fill it sooner.
//
// A queue shows in the round trip. Through the emulated 200 Mbit/s, 20 ms
// link with its 50 ms queue, one connection without random loss lost
// packets in five bursts within two seconds, its smoothed round trip
// between 26 and 70 ms (14 of 20 looks above 41) against a minimum of
// 20.6; at 1% random loss one connection saw 21 to 22 ms, and the
// server's side of a fetch at 2% up to 31 ms on a loaded machine.
//
// A queue is a smoothed round trip above the minimum by the minimum or by
// queueDelay, whichever is less: through 400 Mbit/s and 200 ms with a 50
// ms queue, the overflowing queue swelled the round trip to 216–256 ms,
// never twice the minimum.
//
// What tells them apart is the round trip when the losses are found, not
// over the whole transfer: through that link, sixteen connections lost
// packets only while slow start overfilled the queue, in 6 looks within
// a second, each with the round trip above 228 ms; over the seconds after
// it the queue showed in few looks, and once those were under a quarter
// of all the looks the old count took the early losses for random ones
// and moved the push to FEC (249 Mbit/s against 288 without).
type lossSeries struct {
	conn            *quic.Conn
	lost            uint64
	lossLooks       int // looks that found new losses
	queuedLossLooks int // of them, those that found a queue
}

// random records the counts st of conn and reports whether its losses
// look random: found by lossSpread looks, fewer than half of which found a
// queue.
func (s *lossSeries) random(conn *quic.Conn, st quic.ConnectionStats) bool {
	if s.conn != conn {
		*s = lossSeries{conn: conn}
	}
	if st.PacketsLost > s.lost {
		s.lossLooks++
		if st.SmoothedRTT-st.MinRTT >= min(st.MinRTT, queueDelay) {
			s.queuedLossLooks++
		}
	}
	s.lost = st.PacketsLost
	return s.lossLooks >= lossSpread && 2*s.queuedLossLooks < s.lossLooks
}

// undecided reports whether watchLoss may still move the streams of an
// upload or, with remote, a fetch (which spreads over plain connections
// from the start).
func (c *Client) undecided(remote bool) bool {
	spreads := c.cfg.Conns == 0 && int(c.spread.Load()) < c.plain && (!remote || c.fecOn.Load())
	return c.fecWanted() || spreads
}

// fecWanted reports whether automatic mode may still move the data streams
// to the FEC port.
func (c *Client) fecWanted() bool {
	return c.cfg.FEC == FECAuto && !c.fecOn.Load() && !c.fecFailed.Load() && c.fecAddr.Load() != nil
}

// startFEC connects to the FEC port and, if that works, moves the data
// streams there, on one connection unless told how many; if it does not
// (a firewall may let only the main port through), the client stays on
// plain QUIC.
func (c *Client) startFEC(ctx context.Context) bool {
	if _, _, err := c.connection(ctx, c.plain, false); err != nil {
		c.fecFailed.Store(true)
		return false
	}
	c.move(func() {
		// Through a long path one connection carries next to nothing
		// once it loses packets, over FEC too: the streams stay spread.
		if c.cfg.Conns == 0 && !c.longPath() {
			c.spread.Store(1)
		}
		c.fecOn.Store(true)
	})
	return true
}

// serverLoss asks the server for its counts of conn: its losses are those
// of what it sends.
func (c *Client) serverLoss(ctx context.Context, conn *quic.Conn) (quic.ConnectionStats, error) {
	reply, err := roundTrip(ctx, conn, opPathLoss, nil)
	if err != nil {
		return quic.ConnectionStats{}, fmt.Errorf("path loss: %w", err)
	}
	pl, err := decodePathLoss(reply)
	if err != nil {
		return quic.ConnectionStats{}, fmt.Errorf("path loss: %w", err)
	}
	return quic.ConnectionStats{
		PacketsSent: pl.PacketsSent, PacketsReceived: pl.PacketsReceived, PacketsLost: pl.PacketsLost,
		MinRTT: pl.MinRTT, SmoothedRTT: pl.SmoothedRTT,
	}, nil
}

// fecCeiling is the loss-limited rate of one connection below which FEC
// is worth its cost. FECConn hides the socket from quic-go, which then
// sends without GSO: on loopback one connection over FEC moves about 0.4
// of what it moves bare. On a path whose round trip is short, loss costs
// a connection less than that.
const fecCeiling = 100e6

// lossLimited reports whether a connection with counts st is held back by
// its losses more than FEC would hold it back: whether its loss-limited
// rate (Mathis et al.: 1.22·MSS/(RTT·√loss), quic-go's 1252-byte packets)
// is below fecCeiling.
func lossLimited(st quic.ConnectionStats) bool {
	if st.PacketsSent == 0 || st.PacketsLost == 0 || st.SmoothedRTT <= 0 {
		return false
	}
	loss := float64(st.PacketsLost) / float64(st.PacketsSent)
	rate := 1.22 * 1252 * 8 / (st.SmoothedRTT.Seconds() * math.Sqrt(loss))
	return rate < fecCeiling
}

// lossy reports whether a connection's counts show a link that loses
// packets: more than lossyLink of them, once there are enough to tell.
func lossy(st quic.ConnectionStats) bool {
	return st.PacketsSent+st.PacketsReceived >= lossSample && float64(st.PacketsLost) > lossyLink*float64(st.PacketsSent)
}

// dataStreams is the number of data streams an upload runs: cfg.Streams,
// but at most two fewer than the server's MaxStreams, and at least one. A
// data stream lives as long as the upload, so data streams that took every
// stream the server allows would leave none for the control requests
// (Missing, Commit) that the upload waits on. MaxStreams is known once
// the first hello is answered: after the first request (see call), or
// helloAnswered.
func (c *Client) dataStreams() int {
	return int(max(1, min(int64(c.cfg.Streams), int64(c.maxStreams.Load())-2)))
}

// Dial connects to the server and checks its identity. The token and
// the protocol version are checked by the hello, which Dial sends without
// waiting for its reply, so that the first request travels with it: a
// refused token or version is the first request's error (ErrAuth for the
// token). With FECOn, Dial waits for the reply, which says whether the
// server has a FEC port.
func Dial(ctx context.Context, cfg ClientConfig) (*Client, error) {
	if cfg.Streams <= 0 {
		cfg.Streams = 8
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.RetryFor <= 0 {
		cfg.RetryFor = 2 * time.Minute
	}
	if cfg.Conns < 0 || cfg.Conns > cfg.Streams {
		return nil, fmt.Errorf("client: %d connections for %d streams: want 0 (automatic) to %d", cfg.Conns, cfg.Streams, cfg.Streams)
	}
	if cfg.FEC < FECAuto || cfg.FEC > FECOff {
		return nil, fmt.Errorf("client: %v: want FECAuto, FECOn or FECOff", cfg.FEC)
	}
	if cfg.FECAddr != "" {
		if _, err := net.ResolveUDPAddr("udp", cfg.FECAddr); err != nil {
			return nil, fmt.Errorf("client: FEC address: %w", err)
		}
	}
	c := &Client{cfg: cfg, cache: manifestCache{dir: cfg.CacheDir}}
	c.version.Store(ProtocolVersion)
	c.placed, c.unplace = context.WithCancel(context.Background())
	c.plain = cfg.Conns
	if c.plain == 0 {
		c.plain = cfg.Streams
		c.spread.Store(1)
	} else {
		c.spread.Store(int32(c.plain))
	}
	for range 2 * c.plain {
		c.slots = append(c.slots, new(connSlot))
	}
	if cfg.BWLimit > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(cfg.BWLimit), int(min(cfg.BWLimit, 256<<10)))
	}
	if _, _, err := c.connection(ctx, 0, false); err != nil {
		return nil, err
	}
	if cfg.FEC == FECOn {
		if err := c.helloAnswered(ctx); err != nil {
			c.Close()
			return nil, err
		}
		if c.fecAddr.Load() == nil {
			c.Close()
			return nil, fmt.Errorf("fec on: %w: %s is older than protocol version 2, or serves without one", ErrNoFEC, cfg.Addr)
		}
		c.fecOn.Store(true)
	}
	return c, nil
}

// Close closes the connections.
func (c *Client) Close() error {
	c.mu.Lock()
	for slot, sl := range c.slots {
		if sl.conn != nil {
			c.retire(slot, sl.conn)
			sl.conn, sl.hello = nil, nil
		}
	}
	c.mu.Unlock()
	c.heartbeats.Wait()
	c.hellos.Wait()
	c.placeMu.Lock()
	c.unplace()
	c.placeMu.Unlock()
	c.fecMu.Lock()
	defer c.fecMu.Unlock()
	if c.fecTr != nil {
		// The transport does not close a socket it was given.
		c.fecTr.Close()
		c.fec.Close()
	}
	return nil
}

// Stats returns the wire bytes of every connection so far.
func (c *Client) Stats() WireStats {
	c.mu.Lock()
	s := c.closed
	for slot, sl := range c.slots {
		if sl.conn != nil {
			c.count(&s, slot, sl.conn)
		}
	}
	c.mu.Unlock()
	s.Requests = int(c.requests.Load())
	c.fecMu.Lock()
	defer c.fecMu.Unlock()
	if c.fec != nil {
		// The client's FECConn carries only the FEC slots' connections.
		fs := c.fec.Stats()
		s.BytesSent += fs.BytesSent
		s.BytesReceived += fs.BytesReceived
	}
	return s
}

// count adds conn of slot to s: its bytes when it is plain (those of
// connections over FEC are the FECConn's).
func (c *Client) count(s *WireStats, slot int, conn *quic.Conn) {
	s.Connections++
	if slot >= c.plain {
		s.FECConnections++
		return
	}
	cs := conn.ConnectionStats()
	s.BytesSent += cs.BytesSent
	s.BytesReceived += cs.BytesReceived
}

// retire closes conn of slot and adds it to the closed total; c.mu is
// held.
func (c *Client) retire(slot int, conn *quic.Conn) {
	conn.CloseWithError(codeOK, "")
	c.count(&c.closed, slot, conn)
}

// connection returns the live connection of slot and its generation,
// dialling a new one when there is none. With retry, failed dials are
// repeated with exponential backoff for up to cfg.RetryFor; refusals of
// identity or token are never retried.
func (c *Client) connection(ctx context.Context, slot int, retry bool) (*quic.Conn, int, error) {
	if conn, gen := c.live(slot); conn != nil {
		return conn, gen, nil
	}
	// One goroutine dials each slot; the others wait here and then find
	// its connection. c.mu is not held while dialling, so Stats and broken
	// stay quick during a long outage.
	sl := c.slots[slot]
	sl.dialMu.Lock()
	defer sl.dialMu.Unlock()
	if conn, gen := c.live(slot); conn != nil {
		return conn, gen, nil
	}
	start := time.Now()
	deadline := start.Add(c.cfg.RetryFor)
	backoff := 250 * time.Millisecond
	for {
		// A connection carries its streams right behind its hello
		// rather than a round trip later: the server serves them once
		// it accepts the hello, and closes them with the connection
		// when it does not. A request waits for the reply to its
		// connection's hello before it returns (see call), and so
		// learns what the server speaks and why it refused. Once a
		// hello is refused, every dial waits for its hello.
		early := !c.earlyRefused.Load()
		conn, hello, err := c.dial(ctx, slot, early)
		if err == nil {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.gen++
			sl.conn, sl.gen, sl.hello = conn, c.gen, hello
			// A server from before heartbeats takes no datagrams.
			if conn.ConnectionState().SupportsDatagrams.Remote {
				c.heartbeats.Go(func() { sendHeartbeats(conn) })
			}
			return conn, c.gen, nil
		}
		if !retry || errors.Is(err, ErrAuth) || errors.Is(err, ErrIdentity) || ctx.Err() != nil {
			return nil, 0, err
		}
		if time.Now().Add(backoff).After(deadline) {
			// Say how long the server has been out of reach, not only
			// the last attempt's failure: an outage that outlasts the
			// budget must not read as one slow dial.
			c.mu.Lock()
			since := sl.silentSince
			c.mu.Unlock()
			if since.IsZero() || since.After(start) {
				since = start
			}
			return nil, 0, fmt.Errorf("nothing heard from the server for %v, re-dialled for %v (the retry budget is %v): %w",
				time.Since(since).Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond), c.cfg.RetryFor, err)
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
		backoff = min(2*backoff, 8*time.Second)
	}
}

// live returns the connection of slot if it is still open, and retires a
// dead one.
func (c *Client) live(slot int) (*quic.Conn, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sl := c.slots[slot]
	if sl.conn != nil && sl.conn.Context().Err() == nil {
		return sl.conn, sl.gen
	}
	if sl.conn != nil {
		c.drop(sl, slot, nil)
	}
	return nil, 0
}

// broken marks connection generation gen of slot as unusable, because of
// err, so that the next call dials again.
func (c *Client) broken(slot, gen int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sl := c.slots[slot]; sl.gen == gen && sl.conn != nil {
		c.drop(sl, slot, err)
	}
}

// drop retires the connection of sl, which is slot, because it failed
// (with err, when a stream saw it fail), and notes since when the server
// has been silent on it: a connection that timed out heard nothing for
// idleTimeout before. A stream can report the timeout before the
// connection's context ends, so both are asked. c.mu is held.
func (c *Client) drop(sl *connSlot, slot int, err error) {
	sl.silentSince = time.Now()
	var idle *quic.IdleTimeoutError
	if errors.As(context.Cause(sl.conn.Context()), &idle) || errors.As(err, &idle) {
		sl.silentSince = sl.silentSince.Add(-idleTimeout)
	}
	c.retire(slot, sl.conn)
	sl.conn, sl.hello = nil, nil
}

// dial makes a new connection for slot to the server, to its FEC port
// over the client's FECConn for a FEC slot, and says hello on it. With
// early, it returns once the hello is sent, with the hello, whose reply is
// read beside the requests that follow it (see connection).
//
// The plain connections after the first look for the path's MTU, and
// send packets up to quic-go's largest (1452 bytes) rather than 1280
// where the path takes them: 12% fewer packets for the bulk of a
// transfer. The first connection carries the requests and, unless the
// streams spread, a re-sync's few chunks; for it the probes, about 3 KB,
// would cost more than an unchanged re-push. (Over FEC quic-go never
// probes: it does not see the socket under FECConn.)
func (c *Client) dial(ctx context.Context, slot int, early bool) (*quic.Conn, *pendingHello, error) {
	fec := slot >= c.plain
	var known *KnownServers
	if c.cfg.KnownServers != "" {
		known = &KnownServers{Path: c.cfg.KnownServers}
	}
	tlsConf, err := clientTLS(c.cfg.Addr, c.cfg.Fingerprint, known)
	if err != nil {
		return nil, nil, err
	}
	verify := tlsConf.VerifyPeerCertificate
	c.refused.Store(nil)
	tlsConf.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		err := verify(raw, chains)
		if err != nil {
			c.refused.Store(&err)
		}
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	quicConf := &quic.Config{
		HandshakeIdleTimeout:           c.cfg.DialTimeout,
		MaxIdleTimeout:                 idleTimeout,
		KeepAlivePeriod:                5 * time.Second,
		InitialStreamReceiveWindow:     2 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 8 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
		DisablePathMTUDiscovery:        slot == 0,
	}
	addr := c.cfg.Addr
	var conn *quic.Conn
	if fec {
		var fecAddr *net.UDPAddr
		if fecAddr = c.fecAddr.Load(); fecAddr == nil {
			return nil, nil, fmt.Errorf("%w: %s: no FEC port", ErrUnreachable, addr)
		}
		addr = fecAddr.String()
		var tr *quic.Transport
		if tr, err = c.fecTransport(); err == nil {
			conn, err = tr.Dial(dctx, fecAddr, tlsConf, quicConf)
		}
	} else {
		conn, err = quic.DialAddr(dctx, addr, tlsConf, quicConf)
	}
	if err != nil {
		if r := c.refused.Load(); r != nil {
			return nil, nil, *r
		}
		if silent(ctx, err) {
			return nil, nil, fmt.Errorf("%w: no answer from %s within %v", ErrUnreachable, addr, c.cfg.DialTimeout)
		}
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, addr, err)
	}
	var pending *pendingHello
	if early {
		st, version, err := c.sendHello(dctx, conn)
		if err != nil {
			conn.CloseWithError(codeOK, "")
			return nil, nil, err
		}
		pending = &pendingHello{done: make(chan struct{})}
		c.hellos.Go(func() {
			defer close(pending.done)
			if pending.err = c.awaitHello(conn, st, version); pending.err != nil {
				// The streams on conn fail, and the requests on it
				// return pending.err.
				c.earlyRefused.Store(true)
				conn.CloseWithError(codeOK, "")
			}
		})
	} else {
		err = c.hello(dctx, conn)
	}
	if errors.Is(err, errVersionRefused) {
		// An older server (awaitHello stepped the version down); say
		// hello as the clients of the version before did, on a new
		// connection, for it closed this one.
		conn.CloseWithError(codeOK, "")
		return c.dial(ctx, slot, false)
	}
	if err != nil {
		conn.CloseWithError(codeOK, "")
		return nil, nil, err
	}
	if certs := conn.ConnectionState().TLS.PeerCertificates; len(certs) > 0 {
		fp := Fingerprint(certs[0].Raw)
		c.fp.CompareAndSwap(nil, &fp)
	}
	return conn, pending, nil
}

// pendingHello is a hello whose reply is read beside the requests that
// follow it; err is the hello's outcome once done is closed.
type pendingHello struct {
	done chan struct{}
	err  error
}

// wait waits for the reply to h, if it is pending (h not nil), and
// returns the hello's error. It returns within the dial timeout, for the
// hello's stream has that deadline.
func (h *pendingHello) wait(ctx context.Context) error {
	if h == nil {
		return nil
	}
	select {
	case <-h.done:
		return h.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// helloAnswered returns once the first connection's hello is accepted,
// dialling again when the server refused its version or the connection
// failed before the reply, as call does, and returns the refusal of
// anything else. Requests need not call it (see call); it is for what must
// know the server before any request.
func (c *Client) helloAnswered(ctx context.Context) error {
	for {
		conn, gen, err := c.connection(ctx, 0, true)
		if err != nil {
			return err
		}
		// After a failed hello every dial waits for its hello
		// (earlyRefused), and connection gives up on an unreachable
		// server after RetryFor, so this ends.
		err = c.helloOf(0, conn).wait(ctx)
		if err == nil || !errors.Is(err, errVersionRefused) && !errors.Is(err, ErrUnreachable) {
			return err
		}
		c.broken(0, gen, err)
	}
}

// helloOf returns the hello of conn, slot's connection, when its reply
// was not waited for, and nil when it was or conn is no longer slot's.
func (c *Client) helloOf(slot int, conn *quic.Conn) *pendingHello {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sl := c.slots[slot]; sl.conn == conn {
		return sl.hello
	}
	return nil
}

// serverFingerprint returns the server's fingerprint, "" before it is known.
func (c *Client) serverFingerprint() string {
	if fp := c.fp.Load(); fp != nil {
		return *fp
	}
	return ""
}

// silent reports whether a connection attempt failed with err because the
// attempt's own time ran out (the server did not answer), rather than
// because the caller's ctx ended or the network reported an error.
func silent(ctx context.Context, err error) bool {
	var ne net.Error
	return ctx.Err() == nil && errors.As(err, &ne) && ne.Timeout()
}

func (c *Client) hello(ctx context.Context, conn *quic.Conn) error {
	st, version, err := c.sendHello(ctx, conn)
	if err != nil {
		return err
	}
	return c.awaitHello(conn, st, version)
}

// sendHello opens conn's hello stream and sends the hello, in the version
// it returns; the stream's deadline is ctx's.
func (c *Client) sendHello(ctx context.Context, conn *quic.Conn) (*quic.Stream, uint32, error) {
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %s: %v", ErrUnreachable, c.cfg.Addr, err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		st.SetDeadline(deadline)
	}
	version := c.version.Load()
	msg := appendFrame([]byte{streamHello}, 0, hello{Version: version, Token: c.cfg.Token}.encode())
	if _, err := st.Write(msg); err != nil {
		st.CancelRead(codeOK)
		return nil, 0, fmt.Errorf("%w: %s: hello: %v", ErrUnreachable, c.cfg.Addr, err)
	}
	st.Close() // the hello is all the client sends on this stream
	return st, version, nil
}

// awaitHello reads the reply to the hello sent on conn's stream st in
// version and takes what it says.
func (c *Client) awaitHello(conn *quic.Conn, st *quic.Stream, version uint32) error {
	status, body, err := readLastFrame(st, 4096)
	if err != nil {
		var appErr *quic.ApplicationError
		if errors.As(err, &appErr) && appErr.ErrorCode == codeUnauthorized {
			return fmt.Errorf("%w by %s: token not accepted", ErrAuth, c.cfg.Addr)
		}
		if errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == codeBusy {
			return fmt.Errorf("%s refused the connection: %s", c.cfg.Addr, appErr.ErrorMessage)
		}
		if errors.As(err, &appErr) && appErr.Remote && appErr.ErrorCode == codeProtocol && version > 1 {
			// The refusal's reply was lost in the close.
			c.version.CompareAndSwap(version, version-1)
			return fmt.Errorf("%w: %s: %v", errVersionRefused, c.cfg.Addr, err)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("%w: %s accepted the connection but did not answer its hello within %v", ErrUnreachable, c.cfg.Addr, c.cfg.DialTimeout)
		}
		return fmt.Errorf("%w: %s: hello: %v", ErrUnreachable, c.cfg.Addr, err)
	}
	switch {
	case status == statusOK:
	case status == statusAuth:
		return fmt.Errorf("%w by %s: %s", ErrAuth, c.cfg.Addr, body)
	case status == statusError && version > 1:
		// The one hello a server refuses with this status is one in a
		// version it does not speak.
		c.version.CompareAndSwap(version, version-1)
		return fmt.Errorf("%w: %s: %s", errVersionRefused, c.cfg.Addr, body)
	default:
		return fmt.Errorf("%s refused the connection: %s", c.cfg.Addr, body)
	}
	reply, err := decodeHelloReply(body)
	if err != nil {
		return fmt.Errorf("hello reply from %s: %w", c.cfg.Addr, err)
	}
	if reply.Version != version {
		return fmt.Errorf("%s answered a hello in protocol version %d in version %d", c.cfg.Addr, version, reply.Version)
	}
	c.maxStreams.Store(reply.MaxStreams)
	if reply.FECPort != 0 && c.cfg.FEC != FECOff && c.fecAddr.Load() == nil {
		c.setFECAddr(conn, reply.FECPort)
	}
	return nil
}

// errVersionRefused is hello's error when the server does not speak the
// version the client said hello in; awaitHello then steps the client's
// version down by one (from that version: another hello may have done it
// already).
var errVersionRefused = errors.New("protocol version refused")

// setFECAddr remembers where the FEC port is: cfg.FECAddr, or the address
// conn reached with port.
func (c *Client) setFECAddr(conn *quic.Conn, port uint16) {
	if c.cfg.FECAddr != "" {
		// Checked by Dial.
		addr, _ := net.ResolveUDPAddr("udp", c.cfg.FECAddr)
		c.fecAddr.Store(addr)
		return
	}
	remote, ok := conn.RemoteAddr().(*net.UDPAddr)
	if !ok {
		return
	}
	addr := *remote
	addr.Port = int(port)
	c.fecAddr.Store(&addr)
}

// fecTransport returns the QUIC transport of the FEC slots, making it and
// the client's FECConn on first use.
func (c *Client) fecTransport() (*quic.Transport, error) {
	c.fecMu.Lock()
	defer c.fecMu.Unlock()
	if c.fecTr != nil {
		return c.fecTr, nil
	}
	udp, err := net.ListenUDP("udp", nil)
	if err != nil {
		return nil, fmt.Errorf("fec socket: %w", err)
	}
	if c.fec, err = NewFECConn(udp); err != nil {
		udp.Close()
		return nil, fmt.Errorf("fec socket: %w", err)
	}
	c.fecTr = &quic.Transport{Conn: c.fec}
	return c.fecTr, nil
}

// isConnError reports whether err means the connection is gone (so the
// request may be repeated on a new one) rather than that the server refused.
func isConnError(conn *quic.Conn, err error) bool {
	var se *ServerError
	if errors.As(err, &se) || errors.Is(err, errMalformed) {
		return false
	}
	var ne net.Error
	var streamErr *quic.StreamError
	shutdown := errors.As(err, &streamErr) && streamErr.Remote && streamErr.ErrorCode == codeShutdown
	return shutdown || conn.Context().Err() != nil || errors.As(err, &ne)
}

// call sends one control request and returns the reply, re-dialling and
// repeating the request when the connection drops. Every request is
// idempotent, so a repeat is safe. When the request went right behind its
// connection's hello, call waits for the hello's reply too: a refused
// hello is the request's error, and a server older than the client gets
// the request again in its version, unless op is newer than that.
func (c *Client) call(ctx context.Context, op byte, body []byte) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		conn, gen, err := c.connection(ctx, 0, true)
		if err != nil {
			return nil, err
		}
		if v := c.version.Load(); v < opVersion(op) {
			// A hello refused since the caller chose op.
			return nil, fmt.Errorf("%w: %s speaks version %d", errVersionRefused, c.cfg.Addr, v)
		}
		reply, err := roundTrip(ctx, conn, op, body)
		if herr := c.helloOf(0, conn).wait(ctx); herr != nil {
			c.broken(0, gen, herr)
			switch {
			case attempt >= 8 || ctx.Err() != nil:
			case errors.Is(herr, errVersionRefused) && c.version.Load() >= opVersion(op):
				continue
			case errors.Is(herr, ErrUnreachable):
				// The connection failed before the hello's reply came,
				// as any connection may drop.
				continue
			}
			return nil, herr
		}
		c.requests.Add(1)
		if err == nil || !isConnError(conn, err) || attempt >= 8 || ctx.Err() != nil {
			return reply, err
		}
		c.broken(0, gen, err)
	}
}

func roundTrip(ctx context.Context, conn *quic.Conn, op byte, body []byte) ([]byte, error) {
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		st.CancelRead(codeShutdown)
		st.CancelWrite(codeShutdown)
	})
	defer stop()
	if _, err := st.Write(appendFrame([]byte{streamControl}, op, body)); err != nil {
		return nil, err
	}
	if err := st.Close(); err != nil {
		return nil, err
	}
	status, reply, err := readLastFrame(st, maxControlLen)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if status != statusOK {
		return nil, &ServerError{Status: status, Msg: string(reply)}
	}
	return reply, nil
}

// OpenUpload opens an upload session, or re-attaches to the one an earlier
// push of the same file left open. A server of version 3 or later opens it
// with the first missing request, which then asks about the file's first
// chunks in the same round trip.
// When the client remembers a version of the path that the server still
// holds, the upload sends its chunk lists as deltas against that version.
func (c *Client) OpenUpload(ctx context.Context, spec engine.UploadSpec) (engine.Upload, error) {
	fp := c.serverFingerprint()
	baseN, base := c.cache.load(fp, spec.Path)
	bulk := spec.Size >= bulkUpload
	if bulk && c.cfg.Conns == 0 && c.longPath() {
		c.move(func() { c.spread.Store(int32(c.plain)) })
	}
	u := newUpload(ctx, c)
	u.fp, u.spec, u.proposed = fp, spec, base
	u.ref = baseRef{Version: baseN}
	if base != nil {
		u.ref.BLAKE3 = base.Digests.BLAKE3
	}
	if bulk && base == nil {
		// Nothing of the path is known to be on the server: most of the
		// file will travel.
		u.dialDataSlots()
	}
	if !c.asksAtOpen() {
		if _, err := u.open(ctx, nil); err != nil {
			u.Close()
			return nil, err
		}
	}
	return u, nil
}

// asksAtOpen reports whether the server opens an upload session with the
// first missing request (opOpenAsk, version 3).
func (c *Client) asksAtOpen() bool { return c.version.Load() >= 3 }

// Sessions lists the open upload sessions of this client's token, with
// their progress.
func (c *Client) Sessions(ctx context.Context) ([]index.SessionProgress, error) {
	reply, err := c.call(ctx, opSessions, nil)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	d := dec{b: reply}
	n := d.count("sessions", 1<<20, 1)
	list := make([]index.SessionProgress, 0, n)
	for range n {
		list = append(list, decodeProgress(&d))
	}
	if err := d.end(); err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	return list, nil
}

// CancelSession removes an upload session; its stored chunks stay until
// garbage collection.
func (c *Client) CancelSession(ctx context.Context, id string) error {
	e := enc{}
	e.string(id)
	if _, err := c.call(ctx, opCancel, e.b); err != nil {
		return fmt.Errorf("cancel session %s: %w", id, err)
	}
	return nil
}

// SetBWLimit changes the rate limit of chunk data sent and received, in
// bytes per second, for a client dialled with a limit; 0 lifts it.
func (c *Client) SetBWLimit(bytesPerSecond int64) {
	if c.limiter == nil {
		return
	}
	if bytesPerSecond <= 0 {
		c.limiter.SetLimit(rate.Inf)
		return
	}
	c.limiter.SetLimit(rate.Limit(bytesPerSecond))
}

// limitedReader reads from r and then waits for the client's bandwidth
// limiter for what it read: the stream's data arrives no faster than the
// limit, and QUIC's flow control holds the server back meanwhile.
type limitedReader struct {
	ctx context.Context
	r   io.Reader
	l   *rate.Limiter
}

func (r limitedReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p[:min(len(p), r.l.Burst())])
	if n > 0 {
		if werr := r.l.WaitN(r.ctx, n); err == nil {
			err = werr
		}
	}
	return n, err
}

// readLimited is r, read through the bandwidth limiter if there is one.
func (c *Client) readLimited(ctx context.Context, r io.Reader) io.Reader {
	if c.limiter == nil {
		return r
	}
	return limitedReader{ctx: ctx, r: r, l: c.limiter}
}

// writeLimited writes b to w, waiting for the bandwidth limiter first.
func (c *Client) writeLimited(ctx context.Context, w io.Writer, b []byte) error {
	if c.limiter == nil {
		_, err := w.Write(b)
		return err
	}
	for len(b) > 0 {
		n := min(len(b), c.limiter.Burst())
		if err := c.limiter.WaitN(ctx, n); err != nil {
			return err
		}
		if _, err := w.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
