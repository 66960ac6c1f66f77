package transport

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
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
	// then one per data stream; a fetch, whose losses happen at the
	// server, uses one per data stream from the start.
	Conns int
	// BWLimit caps the rate of chunk data sent, in bytes per second; 0 is
	// no limit.
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
// every connection the client made.
type WireStats struct {
	BytesSent, BytesReceived uint64
	// Connections is the number of connections made, 1 without drops.
	Connections int
}

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
	// data streams, the others data streams only (see slotFor).
	slots   []*connSlot
	mu      sync.Mutex // guards the slots' conn and gen, gen and closed
	gen     int        // of the last connection made
	closed  WireStats  // of connections no longer in use
	refused atomic.Pointer[error]
	// spread is how many slots the data streams use now: Conns, or in
	// automatic mode 1 until the link shows loss.
	spread atomic.Int32
	// maxStreams is the server's bound on the concurrent streams of one
	// connection, from the last hello reply.
	maxStreams atomic.Uint32
}

// connSlot is one of the client's connections, redialled when it drops.
type connSlot struct {
	dialMu sync.Mutex // held by the one goroutine dialling the slot
	conn   *quic.Conn
	gen    int
}

// lossyLink is the share of its packets the first connection must lose
// before automatic mode spreads the data streams over a connection each.
// A clean path loses none; at 0.5% one quic-go connection already carries
// a tenth of what it carries without loss.
const lossyLink = 0.005

// lossSample is how many packets a connection must have sent before its
// losses say anything about the link.
const lossSample = 500

// slotFor returns the slot of upload data stream i: the streams take the
// slots in use in turn.
func (c *Client) slotFor(i int) int { return i % int(c.spread.Load()) }

// watchLoss, in automatic mode, spreads the data streams of uploads over a
// connection each once the first connection has lost more than lossyLink
// of its packets; it returns then, or when ctx ends. Uploads run it beside
// their streams.
func (c *Client) watchLoss(ctx context.Context) error {
	if c.cfg.Conns != 0 {
		return nil
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		c.mu.Lock()
		conn := c.slots[0].conn
		c.mu.Unlock()
		if conn == nil {
			continue
		}
		if lossy(conn.ConnectionStats()) {
			c.spread.Store(int32(len(c.slots)))
			return nil
		}
	}
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
// (Missing, Commit) that the upload waits on.
func (c *Client) dataStreams() int {
	return int(max(1, min(int64(c.cfg.Streams), int64(c.maxStreams.Load())-2)))
}

// Dial connects to the server, checks its identity and authenticates.
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
	c := &Client{cfg: cfg, cache: manifestCache{dir: cfg.CacheDir}}
	slots := cfg.Conns
	if slots == 0 {
		slots = cfg.Streams
		c.spread.Store(1)
	} else {
		c.spread.Store(int32(slots))
	}
	for range slots {
		c.slots = append(c.slots, new(connSlot))
	}
	if cfg.BWLimit > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(cfg.BWLimit), int(min(cfg.BWLimit, 256<<10)))
	}
	if _, _, err := c.connection(ctx, 0, false); err != nil {
		return nil, err
	}
	return c, nil
}

// Close closes the connections.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, sl := range c.slots {
		if sl.conn != nil {
			c.retire(sl.conn)
			sl.conn = nil
		}
	}
	return nil
}

// Stats returns the wire bytes of every connection so far.
func (c *Client) Stats() WireStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.closed
	for _, sl := range c.slots {
		if sl.conn != nil {
			cs := sl.conn.ConnectionStats()
			s.BytesSent += cs.BytesSent
			s.BytesReceived += cs.BytesReceived
			s.Connections++
		}
	}
	return s
}

// retire closes conn and adds its bytes to the closed total; c.mu is held.
func (c *Client) retire(conn *quic.Conn) {
	conn.CloseWithError(codeOK, "")
	cs := conn.ConnectionStats()
	c.closed.BytesSent += cs.BytesSent
	c.closed.BytesReceived += cs.BytesReceived
	c.closed.Connections++
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
	deadline := time.Now().Add(c.cfg.RetryFor)
	backoff := 250 * time.Millisecond
	for {
		conn, err := c.dial(ctx)
		if err == nil {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.gen++
			sl.conn, sl.gen = conn, c.gen
			return conn, c.gen, nil
		}
		if !retry || errors.Is(err, ErrAuth) || errors.Is(err, ErrIdentity) || ctx.Err() != nil || time.Now().Add(backoff).After(deadline) {
			return nil, 0, err
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
		c.retire(sl.conn)
		sl.conn = nil
	}
	return nil, 0
}

// broken marks connection generation gen of slot as unusable, so that the
// next call dials again.
func (c *Client) broken(slot, gen int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sl := c.slots[slot]; sl.gen == gen && sl.conn != nil {
		c.retire(sl.conn)
		sl.conn = nil
	}
}

func (c *Client) dial(ctx context.Context) (*quic.Conn, error) {
	var known *KnownServers
	if c.cfg.KnownServers != "" {
		known = &KnownServers{Path: c.cfg.KnownServers}
	}
	tlsConf, err := clientTLS(c.cfg.Addr, c.cfg.Fingerprint, known)
	if err != nil {
		return nil, err
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
	conn, err := quic.DialAddr(dctx, c.cfg.Addr, tlsConf, &quic.Config{
		HandshakeIdleTimeout:           c.cfg.DialTimeout,
		MaxIdleTimeout:                 20 * time.Second,
		KeepAlivePeriod:                5 * time.Second,
		InitialStreamReceiveWindow:     2 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 8 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
		DisablePathMTUDiscovery:        true,
	})
	if err != nil {
		if r := c.refused.Load(); r != nil {
			return nil, *r
		}
		if silent(ctx, err) {
			return nil, fmt.Errorf("%w: no answer from %s within %v", ErrUnreachable, c.cfg.Addr, c.cfg.DialTimeout)
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, c.cfg.Addr, err)
	}
	if err := c.hello(dctx, conn); err != nil {
		conn.CloseWithError(codeOK, "")
		return nil, err
	}
	if certs := conn.ConnectionState().TLS.PeerCertificates; len(certs) > 0 {
		fp := Fingerprint(certs[0].Raw)
		c.fp.CompareAndSwap(nil, &fp)
	}
	return conn, nil
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
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrUnreachable, c.cfg.Addr, err)
	}
	defer st.Close()
	if deadline, ok := ctx.Deadline(); ok {
		st.SetDeadline(deadline)
	}
	msg := appendFrame([]byte{streamHello}, 0, hello{Version: ProtocolVersion, Token: c.cfg.Token}.encode())
	if _, err := st.Write(msg); err != nil {
		return fmt.Errorf("%w: %s: hello: %v", ErrUnreachable, c.cfg.Addr, err)
	}
	st.Close() // the hello is all the client sends on this stream
	status, body, err := readLastFrame(st, 4096)
	if err != nil {
		var appErr *quic.ApplicationError
		if errors.As(err, &appErr) && appErr.ErrorCode == codeUnauthorized {
			return fmt.Errorf("%w by %s: token not accepted", ErrAuth, c.cfg.Addr)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("%w: %s accepted the connection but did not answer its hello within %v", ErrUnreachable, c.cfg.Addr, c.cfg.DialTimeout)
		}
		return fmt.Errorf("%w: %s: hello: %v", ErrUnreachable, c.cfg.Addr, err)
	}
	switch status {
	case statusOK:
	case statusAuth:
		return fmt.Errorf("%w by %s: %s", ErrAuth, c.cfg.Addr, body)
	default:
		return fmt.Errorf("%s refused the connection: %s", c.cfg.Addr, body)
	}
	reply, err := decodeHelloReply(body)
	if err != nil {
		return fmt.Errorf("hello reply from %s: %w", c.cfg.Addr, err)
	}
	if reply.Version != ProtocolVersion {
		return fmt.Errorf("%s speaks protocol version %d, this client %d", c.cfg.Addr, reply.Version, ProtocolVersion)
	}
	c.maxStreams.Store(reply.MaxStreams)
	return nil
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
// idempotent, so a repeat is safe.
func (c *Client) call(ctx context.Context, op byte, body []byte) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		conn, gen, err := c.connection(ctx, 0, true)
		if err != nil {
			return nil, err
		}
		reply, err := roundTrip(ctx, conn, op, body)
		if err == nil || !isConnError(conn, err) || attempt >= 8 || ctx.Err() != nil {
			return reply, err
		}
		c.broken(0, gen)
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
// push of the same file left open.
// When the client remembers a version of the path that the server still
// holds, the upload sends its chunk lists as deltas against that version.
func (c *Client) OpenUpload(ctx context.Context, spec engine.UploadSpec) (engine.Upload, error) {
	fp := c.serverFingerprint()
	baseN, base := c.cache.load(fp, spec.Path)
	ref := baseRef{Version: baseN}
	if base != nil {
		ref.BLAKE3 = base.Digests.BLAKE3
	}
	e := enc{}
	encodeSpec(&e, spec)
	encodeBaseRef(&e, ref)
	reply, err := c.call(ctx, opOpenUpload, e.b)
	if err != nil {
		return nil, fmt.Errorf("open upload of %s: %w", spec.Path, err)
	}
	d := dec{b: reply}
	id := d.string("session", 64)
	d.byte("reattached") // for the server's log; the session ID is what resumes
	baseOK := d.byte("base accepted") == 1
	if err := d.end(); err != nil {
		return nil, fmt.Errorf("open upload of %s: %w", spec.Path, err)
	}
	u := newUpload(ctx, c, id)
	u.fp = fp
	if baseOK {
		u.baseVersion, u.base = baseN, base
	}
	return u, nil
}

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

// SetBWLimit changes the rate limit of chunk data sent, in bytes per
// second, for a client dialled with a limit; 0 lifts it.
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
