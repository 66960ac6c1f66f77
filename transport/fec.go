package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/reedsolomon"
)

// Forward error correction below QUIC.
//
// quic-go's congestion controller (NewReno) reads every lost packet as
// congestion, so one connection on a path that loses 1% of its packets at
// random moves a few Mbit/s whatever the bandwidth. FECConn sits between
// quic-go and the UDP socket and repairs most losses before QUIC sees them:
// the sender follows every group of k datagrams to a peer with m
// Reed–Solomon parity datagrams, and the receiver rebuilds up to m lost
// datagrams of a group from any k of its k+m. Datagrams that arrive are
// handed to QUIC at once; only rebuilt ones come late, which QUIC takes as
// reordering. The receiver measures the loss from per-frame sequence
// numbers and reports it back, and the sender picks k, m and an
// interleaving depth so that the loss left after repair stays below a
// target, sending no parity at all on a clean path.
//
// The framing is in docs/PROTOCOL.md ("FEC framing"). The first byte of
// every frame has QUIC's fixed bit (0x40) clear, so a frame can never be
// taken for a QUIC packet, and a socket can tell the two apart.

// Wire format constants; see docs/PROTOCOL.md.
const (
	// fecMagic is the first byte of every frame: 0x40 is clear (RFC 9000
	// §17: every QUIC v1 packet but Version Negotiation sets it) and the
	// rest is a constant, so that stray datagrams are dropped.
	fecMagic   = 0xA5
	fecVersion = 1

	fecTypeData     = 1
	fecTypeParity   = 2
	fecTypeFeedback = 3

	// fecHeaderLen is what data and parity frames share: magic,
	// version|type, seq u32, group u32, k u8, m u8, index u8.
	fecHeaderLen         = 13
	fecDataHeaderLen     = fecHeaderLen + 2 // + length u16
	fecParityHeaderLen   = fecHeaderLen + 1 // + count u8
	fecFeedbackLen       = 22               // magic, version|type, 5 × u32
	fecMaxPayload        = 1452             // quic-go's largest packet (protocol.MaxPacketBufferSize)
	fecMaxShard          = 2 + fecMaxPayload
	fecMaxK              = 64 // a group's data datagrams fit a uint64 bitmap
	fecMaxM              = 32
	fecMaxShards         = fecMaxK + fecMaxM
	fecRing              = 256  // groups a receiver tracks per peer
	fecSeqBits           = 1024 // sequence numbers a receiver remembers, for duplicates and reordering
	fecSeqJump           = 4 * fecSeqBits
	fecMaxReady          = 4 * fecMaxK // rebuilt datagrams waiting for ReadFrom
	fecFreeBuffers       = 512         // receive buffers kept for reuse
	fecEstimateMass      = 4000        // datagrams the loss estimate remembers
	fecMinSample         = 16          // datagrams a report must cover to count
	fecLossMargin        = 1.5         // the sender protects against this much more loss than measured
	fecDownReports       = 3           // reports that must agree before the sender lowers its protection
	fecMaxReportedFrames = 1 << 24     // more frames in one report is nonsense or a restart
)

// FECOverhead is how many bytes the largest frame exceeds the largest
// datagram by: a parity frame's header and the length its shards carry. A
// QUIC packet plus FECOverhead must fit the path's MTU; quic-go's default
// 1280-byte packets fit any path with an MTU of 1500, and since FECConn
// hides the socket, quic-go never probes for larger ones.
const FECOverhead = fecParityHeaderLen + 2

// Frame decoding errors; the FECConn counts them apart.
var (
	errFECTruncated = errors.New("fec frame truncated")
	errFECMalformed = errors.New("fec frame malformed")
)

// FECShape is how a sender protects its datagrams: groups of K data
// datagrams followed by M parity datagrams, with Depth groups interleaved
// (datagram i of a block of Depth groups goes to group i mod Depth, so
// that a burst of losses is spread over Depth groups). M 0 sends every
// datagram with the header only.
type FECShape struct {
	K, M, Depth int
}

// Overhead is the parity sent per data datagram, M/K.
func (s FECShape) Overhead() float64 {
	if s.M == 0 {
		return 0
	}
	return float64(s.M) / float64(s.K)
}

func (s FECShape) validate() error {
	if s.M == 0 && s.K == 0 {
		return nil
	}
	if s.K < 1 || s.K > fecMaxK || s.M < 0 || s.M > fecMaxM || s.Depth < 1 || s.Depth > 16 {
		return fmt.Errorf("fec shape %+v: want 1 ≤ K ≤ %d, 0 ≤ M ≤ %d, 1 ≤ Depth ≤ 16", s, fecMaxK, fecMaxM)
	}
	return nil
}

// FECReport is what a sender learnt from one loss report of a peer, and
// what it decided.
type FECReport struct {
	// Peer is the address the report came from.
	Peer netip.AddrPort
	// Frames and Lost are the frames the report covers and those of them
	// that did not arrive (before repair).
	Frames, Lost int
	// Loss is the smoothed loss rate of frames to the peer, and Burst the
	// mean length of a run of lost frames (1 for random loss).
	Loss, Burst float64
	// Shape is what the sender uses from now on, and Residual the share
	// of data datagrams it expects to stay lost after repair.
	Shape    FECShape
	Residual float64
}

// FECStats counts what a FECConn did since it was made.
type FECStats struct {
	// DataSent, ParitySent and FeedbackSent count frames sent;
	// PayloadBytesSent the callers' bytes and BytesSent every byte
	// written, headers and parity included.
	DataSent, ParitySent, FeedbackSent uint64
	PayloadBytesSent, BytesSent        uint64
	// SendErrors counts writes the socket refused.
	SendErrors uint64
	// BytesReceived counts every byte of every datagram read from the
	// socket, whatever it held.
	BytesReceived uint64
	// DataReceived, ParityReceived and FeedbackReceived count frames
	// received; Plain counts datagrams with QUIC's fixed bit set (plain
	// QUIC), delivered with WithFECAcceptPlain and dropped otherwise.
	DataReceived, ParityReceived, FeedbackReceived, Plain uint64
	// Recovered counts data datagrams rebuilt from parity and delivered;
	// Unrecovered those of groups that ended with too few frames.
	Recovered, Unrecovered uint64
	// Duplicates counts frames dropped because they had arrived already.
	Duplicates uint64
	// Truncated counts frames shorter than their header says, Malformed
	// those that are not FEC frames of this version or whose fields
	// contradict each other or the limits.
	Truncated, Malformed uint64
	// Evicted counts groups dropped before they completed, to bound
	// memory or because they waited too long.
	Evicted uint64
	// HeldBytes is the memory of the datagrams held for repair now.
	HeldBytes int64
}

type fecCounters struct {
	dataSent, paritySent, feedbackSent          atomic.Uint64
	payloadBytesSent, bytesSent, sendErrors     atomic.Uint64
	bytesReceived                               atomic.Uint64
	dataReceived, parityReceived, feedbackRecvd atomic.Uint64
	plain, recovered, unrecovered, duplicates   atomic.Uint64
	truncated, malformed, evicted               atomic.Uint64
}

// FECOption configures a FECConn.
type FECOption func(*fecConfig)

type fecConfig struct {
	target        float64
	maxOverhead   float64
	maxDepth      int
	flushDelay    time.Duration
	feedbackEvery time.Duration
	holdTime      time.Duration
	peerMemory    int64
	totalMemory   int64
	maxPeers      int
	peerIdle      time.Duration
	initialLoss   float64
	fixed         *FECShape
	acceptPlain   bool
	observer      func(FECReport)
}

// WithFECTarget sets the share of data datagrams that may stay lost after
// repair; the sender adds parity until its model of the measured loss
// predicts no more. Default 1e-4: a QUIC connection that loses that little
// is limited by its window and the path, not by loss.
func WithFECTarget(residual float64) FECOption {
	return func(c *fecConfig) { c.target = residual }
}

// WithFECMaxOverhead caps the parity per data datagram (M/K); default 0.5.
// On a path that loses more than the cap can repair, the sender sends the
// most parity the cap allows. A group of a single datagram may always have
// one parity datagram.
func WithFECMaxOverhead(ratio float64) FECOption {
	return func(c *fecConfig) { c.maxOverhead = ratio }
}

// WithFECMaxDepth caps the interleaving depth the sender may choose to
// spread bursts of loss over several groups; default 8, 1 turns
// interleaving off. A group that loses more than its parity loses all its
// missing data, so at the same overhead several small interleaved groups
// lose less to bursts than one large group: on a link losing 2% in bursts
// of 8, 25% parity left 0.94% lost in groups of 48+12 and 0.53% in 8
// interleaved groups of 8+2.
func WithFECMaxDepth(depth int) FECOption {
	return func(c *fecConfig) { c.maxDepth = depth }
}

// WithFECFixedShape makes the sender use shape for every peer instead of
// adapting to the measured loss (for measurements and tests).
func WithFECFixedShape(shape FECShape) FECOption {
	return func(c *fecConfig) { c.fixed = &shape }
}

// WithFECFlushDelay bounds how long a group waits for more datagrams
// before its parity goes out; default 5ms. It bounds the delay of a
// rebuilt datagram, which QUIC must receive before it declares the
// original lost (after 9/8 of a round trip, more once it has seen
// reordering); shorter delays make smaller groups on slow senders, which
// cost more parity.
func WithFECFlushDelay(d time.Duration) FECOption {
	return func(c *fecConfig) { c.flushDelay = d }
}

// WithFECFeedbackInterval sets how often a receiver reports the loss it
// measured to each peer that sends to it; default 100ms.
func WithFECFeedbackInterval(d time.Duration) FECOption {
	return func(c *fecConfig) { c.feedbackEvery = d }
}

// WithFECHoldTime bounds how long a receiver keeps an incomplete group
// waiting for the frames that would complete it; default 200ms.
func WithFECHoldTime(d time.Duration) FECOption {
	return func(c *fecConfig) { c.holdTime = d }
}

// WithFECMemory bounds the bytes of datagrams a receiver holds for repair,
// per peer and in all; defaults 4 MiB and 64 MiB. Past a bound the oldest
// incomplete group of the peer is dropped, and then datagrams are
// delivered without being kept.
func WithFECMemory(perPeer, total int64) FECOption {
	return func(c *fecConfig) { c.peerMemory, c.totalMemory = perPeer, total }
}

// WithFECInitialLoss is the loss rate the sender assumes for a new peer
// until the first report; default 0.01. A client turns FEC on because it
// measured loss, so starting protected is the better guess.
func WithFECInitialLoss(p float64) FECOption {
	return func(c *fecConfig) { c.initialLoss = p }
}

// WithFECAcceptPlain makes the FECConn also serve peers that speak plain
// QUIC: datagrams with QUIC's fixed bit set are delivered as they are,
// and what is sent to such a peer goes without framing. A server can then
// run one port for both kinds of client.
func WithFECAcceptPlain(accept bool) FECOption {
	return func(c *fecConfig) { c.acceptPlain = accept }
}

// WithFECObserver has fn called with every loss report a peer sends and
// the sender's decision. It runs on the goroutine that reads the socket
// (quic-go's), so it must return quickly.
func WithFECObserver(fn func(FECReport)) FECOption {
	return func(c *fecConfig) { c.observer = fn }
}

func (c *fecConfig) validate() error {
	switch {
	case !(c.target > 0 && c.target < 1):
		return fmt.Errorf("fec: target residual loss %v: want a probability in (0, 1)", c.target)
	case !(c.maxOverhead > 0 && c.maxOverhead <= float64(fecMaxM)):
		return fmt.Errorf("fec: max overhead %v: want a ratio in (0, %d]", c.maxOverhead, fecMaxM)
	case c.maxDepth < 1 || c.maxDepth > 16:
		return fmt.Errorf("fec: max depth %d: want 1 to 16", c.maxDepth)
	case c.flushDelay <= 0 || c.feedbackEvery <= 0 || c.holdTime <= 0:
		return fmt.Errorf("fec: flush delay %v, feedback interval %v, hold time %v: want durations above 0", c.flushDelay, c.feedbackEvery, c.holdTime)
	case c.peerMemory < fecMaxShard*fecMaxShards || c.totalMemory < c.peerMemory:
		return fmt.Errorf("fec: memory %d per peer, %d in all: want at least one full group (%d bytes) per peer, and no more per peer than in all",
			c.peerMemory, c.totalMemory, fecMaxShard*fecMaxShards)
	case !(c.initialLoss >= 0 && c.initialLoss < 1):
		return fmt.Errorf("fec: initial loss %v: want a probability in [0, 1)", c.initialLoss)
	}
	if c.fixed != nil {
		return c.fixed.validate()
	}
	return nil
}

// FECConn is a net.PacketConn for quic.Transport that protects datagrams
// with Reed–Solomon parity; both ends of a connection must use one. It is
// safe for concurrent use.
//
// It hides the *net.UDPConn it wraps, so quic-go reads and writes one
// datagram per system call, without GSO, batched reads or ECN, and does
// not set the don't-fragment bit, which also keeps it from probing the
// path MTU (its probes would not count the framing). Use it for the
// connections that lose packets, not for every one: on a clean loopback
// path one QUIC connection moves about 0.44 of what it moves over the
// bare socket with the header alone, and 0.38 with 6% parity.
//
// Both ends of a path must use one; a server that also serves plain QUIC
// clients on the same port uses WithFECAcceptPlain.
type FECConn struct {
	udp   *net.UDPConn
	cfg   fecConfig
	epoch time.Time

	peersMu sync.RWMutex
	peers   map[netip.AddrPort]*fecPeer

	// readMu admits one reader at a time; it is held across the socket
	// read, so nothing else may wait for it.
	readMu sync.Mutex
	rbuf   []byte

	// recvMu guards every peer's receiver, the rebuilt datagrams waiting
	// for ReadFrom, the free buffers and held.
	recvMu  sync.Mutex
	ready   []fecReady
	readyAt int
	free    [][]byte
	held    int64
	scratch [][]byte

	// flushMu guards the queue of peers with an open block and each
	// peer's queued flag.
	flushMu    sync.Mutex
	flushQ     []*fecPeer
	flushSpare []*fecPeer
	kick       chan struct{}

	// initial is every new peer's plan; plans are never changed, only
	// replaced.
	initial *fecPlan

	stats     fecCounters
	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// fecReady is a rebuilt datagram waiting for ReadFrom: buf holds its
// shard, the length and then the payload.
type fecReady struct {
	buf  []byte
	n    int
	from *fecPeer
}

// NewFECConn wraps udp, which it owns from then on: Close closes it. It
// starts one goroutine, for the timers, that Close stops.
func NewFECConn(udp *net.UDPConn, opts ...FECOption) (*FECConn, error) {
	cfg := defaultFECConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := newFECConn(udp, cfg, initialPlan(&cfg))
	c.rbuf = make([]byte, 64<<10)
	c.wg.Go(c.run)
	return c, nil
}

// initialPlan is the plan for new peers.
func initialPlan(cfg *fecConfig) *fecPlan {
	if cfg.fixed != nil {
		return fixedPlan(*cfg.fixed)
	}
	return planFEC(cfg.initialLoss*fecLossMargin, 1, 0, cfg)
}

func defaultFECConfig() fecConfig {
	return fecConfig{
		target:        1e-4,
		maxOverhead:   0.5,
		maxDepth:      8,
		flushDelay:    5 * time.Millisecond,
		feedbackEvery: 100 * time.Millisecond,
		holdTime:      200 * time.Millisecond,
		peerMemory:    4 << 20,
		totalMemory:   64 << 20,
		maxPeers:      1024,
		peerIdle:      time.Minute,
		initialLoss:   0.01,
	}
}

// newFECConn makes a conn that does not run its timers yet, with initial
// as every new peer's plan.
func newFECConn(udp *net.UDPConn, cfg fecConfig, initial *fecPlan) *FECConn {
	c := &FECConn{
		udp:     udp,
		cfg:     cfg,
		epoch:   time.Now(),
		peers:   make(map[netip.AddrPort]*fecPeer),
		scratch: make([][]byte, fecMaxShards),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	c.initial = initial
	return c
}

// now is the conn's monotonic clock in nanoseconds.
func (c *FECConn) now() int64 { return int64(time.Since(c.epoch)) }

// Close stops the timers and closes the socket, which ends a ReadFrom
// that waits. It may be called more than once.
func (c *FECConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.wg.Wait()
		if err := c.udp.Close(); err != nil {
			c.closeErr = fmt.Errorf("fec: close %s: %w", c.udp.LocalAddr(), err)
		}
	})
	return c.closeErr
}

// LocalAddr is the socket's address.
func (c *FECConn) LocalAddr() net.Addr { return c.udp.LocalAddr() }

// SetDeadline sets the socket's read and write deadlines.
func (c *FECConn) SetDeadline(t time.Time) error { return c.udp.SetDeadline(t) }

// SetReadDeadline sets the socket's read deadline; quic-go uses it to end
// its reader when a Transport closes.
func (c *FECConn) SetReadDeadline(t time.Time) error { return c.udp.SetReadDeadline(t) }

// SetWriteDeadline sets the socket's write deadline.
func (c *FECConn) SetWriteDeadline(t time.Time) error { return c.udp.SetWriteDeadline(t) }

// SetReadBuffer sets the socket's receive buffer; quic-go asks for a large
// one through it.
func (c *FECConn) SetReadBuffer(bytes int) error { return c.udp.SetReadBuffer(bytes) }

// SetWriteBuffer sets the socket's send buffer.
func (c *FECConn) SetWriteBuffer(bytes int) error { return c.udp.SetWriteBuffer(bytes) }

// Stats returns the counts so far.
func (c *FECConn) Stats() FECStats {
	s := &c.stats
	c.recvMu.Lock()
	held := c.held
	c.recvMu.Unlock()
	return FECStats{
		DataSent: s.dataSent.Load(), ParitySent: s.paritySent.Load(), FeedbackSent: s.feedbackSent.Load(),
		PayloadBytesSent: s.payloadBytesSent.Load(), BytesSent: s.bytesSent.Load(), SendErrors: s.sendErrors.Load(),
		BytesReceived: s.bytesReceived.Load(),
		DataReceived:  s.dataReceived.Load(), ParityReceived: s.parityReceived.Load(), FeedbackReceived: s.feedbackRecvd.Load(),
		Plain: s.plain.Load(), Recovered: s.recovered.Load(), Unrecovered: s.unrecovered.Load(),
		Duplicates: s.duplicates.Load(), Truncated: s.truncated.Load(), Malformed: s.malformed.Load(),
		Evicted: s.evicted.Load(), HeldBytes: held,
	}
}

// Shape returns the shape the sender uses for peer now, and false when it
// has not sent to peer.
func (c *FECConn) Shape(peer netip.AddrPort) (FECShape, bool) {
	c.peersMu.RLock()
	p := c.peers[unmap(peer)]
	c.peersMu.RUnlock()
	if p == nil {
		return FECShape{}, false
	}
	p.send.mu.Lock()
	defer p.send.mu.Unlock()
	return p.send.plan.shape, true
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// fecPeer is the state of one remote address: what is sent to it and what
// is received from it.
type fecPeer struct {
	addr    netip.AddrPort // unmapped
	udpAddr *net.UDPAddr   // what ReadFrom returns; shared, never changed
	active  atomic.Int64   // conn time of the last datagram either way
	plain   atomic.Bool    // the peer speaks plain QUIC (WithFECAcceptPlain)
	queued  bool           // in the flush queue; guarded by FECConn.flushMu
	send    fecSender
	recv    fecReceiver // guarded by FECConn.recvMu
}

// peer returns the state of ap, making it when there is none.
func (c *FECConn) peer(ap netip.AddrPort) *fecPeer {
	ap = unmap(ap)
	c.peersMu.RLock()
	p := c.peers[ap]
	c.peersMu.RUnlock()
	if p != nil {
		return p
	}
	c.peersMu.Lock()
	defer c.peersMu.Unlock()
	if p = c.peers[ap]; p != nil {
		return p
	}
	if len(c.peers) >= c.cfg.maxPeers {
		// Whoever was quiet longest makes room: a flood of spoofed
		// sources costs the peers it displaces their repair state, not
		// the process its memory.
		var oldest *fecPeer
		for _, q := range c.peers {
			if oldest == nil || q.active.Load() < oldest.active.Load() {
				oldest = q
			}
		}
		c.dropPeerLocked(oldest)
	}
	p = &fecPeer{addr: ap, udpAddr: net.UDPAddrFromAddrPort(ap)}
	p.active.Store(c.now())
	p.send.init(&c.cfg, c.initial)
	c.peers[ap] = p
	return p
}

// dropPeerLocked forgets p; c.peersMu is held.
func (c *FECConn) dropPeerLocked(p *fecPeer) {
	delete(c.peers, p.addr)
	c.recvMu.Lock()
	for i := range p.recv.ring {
		c.releaseGroup(&p.recv, &p.recv.ring[i])
	}
	c.recvMu.Unlock()
}

// run owns the timers: it sends the parity of blocks that waited
// flushDelay, and every feedback interval reports the loss measured to
// each peer and drops what is too old.
func (c *FECConn) run() {
	tick := time.NewTicker(c.cfg.feedbackEvery)
	defer tick.Stop()
	flush := time.NewTimer(time.Hour)
	flush.Stop()
	defer flush.Stop()
	var buf []byte
	for {
		select {
		case <-c.done:
			return
		case <-c.kick:
		case <-flush.C:
		case <-tick.C:
			buf = c.tick(buf)
		}
		if wait, ok := c.flushDue(); ok {
			flush.Reset(wait)
		}
	}
}

// queueFlush puts p, whose block just opened, in the flush queue, and
// with kick wakes the timer goroutine to look at its deadline;
// p.send.mu is held.
func (c *FECConn) queueFlush(p *fecPeer, kick bool) {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	if p.queued {
		return
	}
	p.queued = true
	c.flushQ = append(c.flushQ, p)
	if kick && len(c.flushQ) == 1 {
		// Blocks open in time order, so only a queue that was empty has
		// a deadline earlier than the timer's.
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
}

// flushDue sends the parity of every block whose time is up, and returns
// how long until the next one is.
func (c *FECConn) flushDue() (time.Duration, bool) {
	c.flushMu.Lock()
	// Two queues in turn: the one being worked through and the one that
	// fills meanwhile.
	q := c.flushQ
	c.flushQ, c.flushSpare = c.flushSpare[:0], nil
	for _, p := range q {
		p.queued = false
	}
	c.flushMu.Unlock()
	defer func() {
		clear(q)
		c.flushMu.Lock()
		c.flushSpare = q[:0]
		c.flushMu.Unlock()
	}()
	now := c.now()
	next := int64(math.MaxInt64)
	for _, p := range q {
		s := &p.send
		s.mu.Lock()
		if s.open {
			due := s.opened + int64(c.cfg.flushDelay)
			if due <= now {
				c.closeBlock(p)
			} else {
				next = min(next, due)
				c.queueFlush(p, false)
			}
		}
		s.mu.Unlock()
	}
	if next == math.MaxInt64 {
		return 0, false
	}
	return time.Duration(next - now), true
}

// tick reports the loss measured to every peer that sent something since
// the last tick, drops incomplete groups that waited too long and peers
// that went quiet, and updates each sender's rate.
func (c *FECConn) tick(buf []byte) []byte {
	now := c.now()
	c.peersMu.RLock()
	peers := make([]*fecPeer, 0, len(c.peers))
	for _, p := range c.peers {
		peers = append(peers, p)
	}
	c.peersMu.RUnlock()
	var idle []*fecPeer
	for _, p := range peers {
		if now-p.active.Load() > int64(c.cfg.peerIdle) {
			idle = append(idle, p)
			continue
		}
		c.recvMu.Lock()
		r := &p.recv
		report := r.dirty
		r.dirty = false
		counts := fecCounts{expected: r.win.expected, received: r.win.received, gaps: r.win.gaps, recovered: r.recovered, lost: r.lost}
		for i := range r.ring {
			g := &r.ring[i]
			if g.used && !g.done && now-g.opened > int64(c.cfg.holdTime) {
				c.endGroup(r, g)
			}
		}
		c.recvMu.Unlock()
		if report && !p.plain.Load() {
			buf = appendFECFeedback(buf[:0], counts)
			c.write(buf, p.addr)
			c.stats.feedbackSent.Add(1)
		}
		p.send.mu.Lock()
		p.send.tick(&c.cfg)
		p.send.mu.Unlock()
	}
	if len(idle) > 0 {
		c.peersMu.Lock()
		for _, p := range idle {
			if c.peers[p.addr] == p && now-p.active.Load() > int64(c.cfg.peerIdle) {
				c.dropPeerLocked(p)
			}
		}
		c.peersMu.Unlock()
	}
	return buf
}

// write sends one frame, counting its bytes or the failure.
func (c *FECConn) write(b []byte, to netip.AddrPort) error {
	_, err := c.udp.WriteToUDPAddrPort(b, to)
	if err != nil {
		c.stats.sendErrors.Add(1)
		return err
	}
	c.stats.bytesSent.Add(uint64(len(b)))
	return nil
}

// WriteTo sends p to addr, a *net.UDPAddr, as a data frame, and the
// parity of its group when that completes it.
func (c *FECConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: c.udp.LocalAddr(), Addr: addr, Err: fmt.Errorf("fec: %T is not a UDP address", addr)}
	}
	peer := c.peer(ua.AddrPort())
	peer.active.Store(c.now())
	c.stats.payloadBytesSent.Add(uint64(len(p)))
	if peer.plain.Load() {
		if err := c.write(p, peer.addr); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if err := c.send(peer, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// fecSender is what is sent to one peer.
type fecSender struct {
	mu   sync.Mutex
	cfg  *fecConfig
	seq  uint32
	next uint32 // the next group's ID
	plan *fecPlan
	// The open block: Depth groups filled in turn, with the plan they
	// were opened with.
	open   bool
	opened int64
	block  *fecPlan
	groups []*fecSendGroup
	fill   int
	buf    []byte
	// sent counts data frames since the last tick; window is the smoothed
	// number of them in one flush delay.
	sent   int
	window float64
	// The loss estimate: the last report applied, and decayed sums of the
	// frames expected, lost and runs of losses since.
	// base starts at zero: the peer's receiver counts from our first
	// frame, so its first report already says something.
	base               fecCounts
	estFrames, estLost float64
	estGaps            float64
	downStreak         int
}

// fecSendGroup accumulates the parity of one group as its data frames
// go out, so that the sender keeps no copy of them.
type fecSendGroup struct {
	id     uint32
	count  int
	maxLen int
	parity [][]byte
	views  [][]byte
	broken bool
}

func (s *fecSender) init(cfg *fecConfig, plan *fecPlan) {
	s.cfg = cfg
	s.buf = make([]byte, 0, 2048)
	s.plan = plan
}

// send frames p and writes it to peer.
func (c *FECConn) send(peer *fecPeer, p []byte) error {
	s := &peer.send
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent++
	c.stats.dataSent.Add(1)
	if len(p) > fecMaxPayload || !s.open && s.plan.shape.M == 0 {
		// Unprotected: no parity wanted, or too large to protect
		// (quic-go never sends such datagrams).
		frame := appendFECData(s.buf[:0], s.seq, 0, 0, 0, 0, p)
		s.seq++
		return c.write(frame, peer.addr)
	}
	if !s.open {
		s.openBlock(c.now())
		c.queueFlush(peer, true)
	}
	shape := s.block.shape
	g := s.groups[s.fill%shape.Depth]
	frame := appendFECData(s.buf[:0], s.seq, g.id, shape.K, shape.M, g.count, p)
	s.seq++
	err := c.write(frame, peer.addr)
	// The datagram joins the parity even when the write failed: the
	// receiver can then rebuild it.
	if !g.broken && g.add(s.block.enc, frame[fecHeaderLen:], g.count) != nil {
		// Cannot happen (the shard fits, the index is in range); if it
		// did, wrong parity would rebuild garbage, so send none.
		g.broken = true
	}
	g.count++
	s.fill++
	if s.fill == shape.K*shape.Depth {
		c.closeBlock(peer)
	}
	return err
}

// openBlock starts a block of groups with the current plan.
func (s *fecSender) openBlock(now int64) {
	s.block = s.plan
	shape := s.block.shape
	for len(s.groups) < shape.Depth {
		s.groups = append(s.groups, &fecSendGroup{})
	}
	for _, g := range s.groups[:shape.Depth] {
		g.reset(s.next, shape.M)
		s.next++
	}
	s.open, s.opened, s.fill = true, now, 0
}

// closeBlock sends the parity of the open block, interleaved as its data
// was, and closes it; peer.send.mu is held.
func (c *FECConn) closeBlock(peer *fecPeer) {
	s := &peer.send
	shape := s.block.shape
	for j := range shape.M {
		for _, g := range s.groups[:shape.Depth] {
			if g.count == 0 || g.broken || j >= int(s.block.need[g.count]) {
				continue
			}
			frame := appendFECParity(s.buf[:0], s.seq, g.id, shape.K, shape.M, j, g.count, g.parity[j][:g.maxLen])
			s.seq++
			c.stats.paritySent.Add(1)
			c.write(frame, peer.addr)
		}
	}
	s.open = false
}

func (g *fecSendGroup) reset(id uint32, m int) {
	for _, p := range g.parity {
		clear(p[:g.maxLen])
	}
	for len(g.parity) < m {
		g.parity = append(g.parity, make([]byte, fecMaxShard))
	}
	g.parity = g.parity[:m]
	g.views = g.views[:0]
	for range m {
		g.views = append(g.views, nil)
	}
	g.id, g.count, g.maxLen, g.broken = id, 0, 0, false
}

// add folds shard, data datagram idx, into the group's parity. A shard
// shorter than the group's longest is taken as zero-padded, which adds
// nothing to the parity beyond its length.
func (g *fecSendGroup) add(enc reedsolomon.Encoder, shard []byte, idx int) error {
	if n := len(shard); n > g.maxLen {
		for _, p := range g.parity {
			clear(p[g.maxLen:n])
		}
		g.maxLen = n
	}
	for j, p := range g.parity {
		g.views[j] = p[:len(shard)]
	}
	return enc.EncodeIdx(shard, idx, g.views)
}

// tick updates the sender's rate; s.mu is held.
func (s *fecSender) tick(cfg *fecConfig) {
	w := float64(s.sent) * float64(cfg.flushDelay) / float64(cfg.feedbackEvery)
	s.sent = 0
	if s.window == 0 {
		s.window = w
	} else {
		s.window = 0.5*s.window + 0.5*w
	}
}

// fecCounts are a receiver's cumulative counts, as a feedback frame
// carries them; they wrap.
type fecCounts struct {
	expected, received, gaps, recovered, lost uint32
}

// onFeedback folds a peer's report into the loss estimate and picks a new
// shape; it returns what the observer is told.
func (s *fecSender) onFeedback(fb fecCounts, peer netip.AddrPort) (FECReport, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	frames := int64(int32(fb.expected - s.base.expected))
	received := int64(int32(fb.received - s.base.received))
	gaps := int64(int32(fb.gaps - s.base.gaps))
	switch {
	case frames < 0 && frames > -fecMaxReportedFrames:
		// An older report that arrived late.
		return FECReport{}, false
	case frames < 0 || frames > fecMaxReportedFrames || received < 0 || received > fecMaxReportedFrames || gaps < 0:
		// The receiver restarted, or the report is nonsense: start over.
		s.base = fb
		return FECReport{}, false
	case frames < fecMinSample:
		// Too few frames to say anything; they count with the next.
		return FECReport{}, false
	}
	s.base = fb
	lost := min(max(frames-received, 0), frames)
	gaps = min(gaps, lost)
	s.estFrames += float64(frames)
	s.estLost += float64(lost)
	s.estGaps += float64(gaps)
	if s.estFrames > fecEstimateMass {
		// A sliding memory of about fecEstimateMass frames, whatever the
		// rate: a few hundred milliseconds at full speed, longer when
		// slow, and always enough frames to see a loss of 1e-3.
		f := fecEstimateMass / s.estFrames
		s.estFrames *= f
		s.estLost *= f
		s.estGaps *= f
	}
	loss := s.estLost / s.estFrames
	burst := 1.0
	if s.estGaps > 0 {
		burst = max(1, s.estLost/s.estGaps)
	}
	if s.cfg.fixed == nil {
		s.replan(loss, burst)
	}
	return FECReport{
		Peer: peer, Frames: int(frames), Lost: int(lost), Loss: loss, Burst: burst,
		Shape: s.plan.shape, Residual: s.plan.residual,
	}, true
}

// replan moves to the plan for loss (with a margin) at once when that
// protects more, and only after fecDownReports reports in a row agree
// when it protects less, so that the shape does not flap with the noise
// of the estimate.
func (s *fecSender) replan(loss, burst float64) {
	next := planFEC(loss*fecLossMargin, burst, s.window, s.cfg)
	cur, want := s.plan.shape.Overhead(), next.shape.Overhead()
	switch {
	case want > cur:
		s.plan, s.downStreak = next, 0
	case want < cur:
		s.downStreak++
		if s.downStreak >= fecDownReports {
			s.plan, s.downStreak = next, 0
		}
	default:
		s.plan, s.downStreak = next, 0
	}
}

// fecPlan is a sender's shape with the parity to send for a group that
// closes early, before it has K data datagrams.
type fecPlan struct {
	shape FECShape
	// need[c] is the parity for a group of c data datagrams, at most
	// shape.M.
	need     [fecMaxK + 1]uint8
	residual float64
	enc      reedsolomon.Encoder
}

// fixedPlan is the plan of a fixed shape: full parity for every group.
func fixedPlan(shape FECShape) *fecPlan {
	p := &fecPlan{shape: shape}
	if shape.M == 0 {
		p.shape = FECShape{Depth: 1}
		return p
	}
	for c := 1; c <= shape.K; c++ {
		p.need[c] = uint8(shape.M)
	}
	p.enc = mustCodec(shape.K, shape.M)
	return p
}

// planFEC picks the shape for a loss rate and mean burst length, for a
// sender that sends window datagrams in a flush delay (0: unknown), and
// the parity for groups that close early. Groups as large as the window
// allows cost the least parity, since the loss in a large group is closer
// to its mean; interleaving spreads a burst over several groups, at the
// price of smaller ones. The residual loss of each candidate comes from a
// Gilbert model of the path fitted to loss and burst.
func planFEC(loss, burst, window float64, cfg *fecConfig) *fecPlan {
	if loss <= cfg.target {
		return &fecPlan{shape: FECShape{Depth: 1}}
	}
	var best *fecPlan
	for depth := 1; depth <= cfg.maxDepth; depth *= 2 {
		k := fecMaxK
		if window > 0 {
			k = min(fecMaxK, max(1, int(window/float64(depth))))
		}
		if depth > 1 && k < 4 {
			break
		}
		p := &fecPlan{shape: FECShape{K: k, Depth: depth}}
		resid := lossModel(loss, burst, depth, k, cfg, &p.need)
		p.shape.M = int(p.need[k])
		p.residual = resid[k]
		if better(p, best, cfg.target) {
			best = p
		}
	}
	if best.shape.M == 0 {
		return &fecPlan{shape: FECShape{Depth: 1}, residual: best.residual}
	}
	best.enc = mustCodec(best.shape.K, best.shape.M)
	return best
}

// better reports whether plan a beats b: meeting the target first, then
// less parity, then less interleaving.
func better(a, b *fecPlan, target float64) bool {
	if b == nil {
		return true
	}
	aOK, bOK := a.residual <= target, b.residual <= target
	switch {
	case aOK != bOK:
		return aOK
	case !aOK:
		return a.residual < b.residual
	}
	return a.shape.Overhead() < b.shape.Overhead()
}

// lossModel fills need[c], for every group of c ≤ k data datagrams, with
// the least parity whose residual loss is at most cfg.target (or the most
// cfg.maxOverhead allows), and returns the residual of each.
//
// The path is a Gilbert model: good or bad at each frame, losing the
// frames sent in the bad state, with the bad state's stationary share the
// loss rate and its stays burst frames long on average. Frames of one
// group are depth frames apart on the wire. A dynamic programme over the
// frames of a group gives the distribution of the number lost among the
// first n; a group of n frames with m parity loses data for good when more
// than m are lost, and then loses, on average, the share j/n of its data
// when j are lost. Random loss is the case burst = 1/(1-loss), where the
// residual is loss·P(Binomial(n-1, loss) ≥ m).
func lossModel(loss, burst float64, depth, k int, cfg *fecConfig, need *[fecMaxK + 1]uint8) []float64 {
	loss = min(loss, 0.5)
	burst = max(burst, 1/(1-loss))
	r := 1 / burst
	a := min(1, loss*r/(1-loss))
	// One step of the chain, then depth steps.
	gg, gb, bg, bb := 1-a, a, r, 1-r
	for range depth - 1 {
		gg, gb, bg, bb = gg*(1-a)+gb*r, gg*a+gb*(1-r), bg*(1-a)+bb*r, bg*a+bb*(1-r)
	}
	n := k + fecMaxM
	fg := make([]float64, n+2)
	fb := make([]float64, n+2)
	ng := make([]float64, n+2)
	nb := make([]float64, n+2)
	tail := make([]float64, n+2)
	resid := make([]float64, k+1)
	found := make([]bool, k+1)
	fg[0], fb[1] = 1-loss, loss
	for i := 1; i <= n; i++ {
		if i > 1 {
			clear(ng)
			clear(nb)
			for j := 0; j < i; j++ {
				ng[j] += fg[j]*gg + fb[j]*bg
				nb[j+1] += fg[j]*gb + fb[j]*bb
			}
			fg, ng = ng, fg
			fb, nb = nb, fb
		}
		// tail[j] = Σ_{l ≥ j} l·P(l of the i frames lost)
		tail[i+1] = 0
		for j := i; j >= 0; j-- {
			tail[j] = tail[j+1] + float64(j)*(fg[j]+fb[j])
		}
		for c := max(1, i-fecMaxM); c <= min(k, i); c++ {
			m := i - c
			if found[c] {
				continue
			}
			limit := min(fecMaxM, max(1, int(cfg.maxOverhead*float64(c)+1e-9)))
			if m > limit {
				continue
			}
			res := tail[m+1] / float64(i)
			if res <= cfg.target || m == limit {
				need[c], resid[c], found[c] = uint8(m), res, true
			}
		}
	}
	return resid
}

// Reed–Solomon codecs, one per shape, shared by every conn: building one
// inverts a matrix.
var (
	codecMu sync.Mutex
	codecs  = map[[2]int]reedsolomon.Encoder{}
)

// fecCodecLimit bounds the codecs kept: a peer can name any of 2048
// shapes, and each codec holds tables.
const fecCodecLimit = 128

// fecCodec returns the codec of k data and m parity shards. Its inversion
// cache is off: it would keep a matrix for every pattern of loss ever
// seen, without bound, and inverting anew costs tens of microseconds.
func fecCodec(k, m int) (reedsolomon.Encoder, error) {
	codecMu.Lock()
	defer codecMu.Unlock()
	if enc := codecs[[2]int{k, m}]; enc != nil {
		return enc, nil
	}
	enc, err := reedsolomon.New(k, m, reedsolomon.WithInversionCache(false))
	if err != nil {
		return nil, fmt.Errorf("fec: codec for %d+%d shards: %w", k, m, err)
	}
	if len(codecs) >= fecCodecLimit {
		for key := range codecs {
			delete(codecs, key)
			break
		}
	}
	codecs[[2]int{k, m}] = enc
	return enc, nil
}

// mustCodec is fecCodec for shapes the sender made, which are valid.
func mustCodec(k, m int) reedsolomon.Encoder {
	enc, err := fecCodec(k, m)
	if err != nil {
		panic(err)
	}
	return enc
}

// ReadFrom returns the next datagram from a peer: a data frame's payload
// as it arrives, a datagram rebuilt from parity, or (with
// WithFECAcceptPlain) a plain QUIC packet. Other frames are consumed on
// the way. A socket error is returned as the socket gave it, a
// *net.OpError: quic-go asserts net.Error on it to tell a deadline from a
// failure.
func (c *FECConn) ReadFrom(p []byte) (int, net.Addr, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	for {
		if n, addr, ok := c.popReady(p); ok {
			return n, addr, nil
		}
		n, from, err := c.udp.ReadFromUDPAddrPort(c.rbuf)
		if err != nil {
			return 0, nil, err
		}
		c.stats.bytesReceived.Add(uint64(n))
		if n, addr, ok := c.receive(p, c.rbuf[:n], from); ok {
			return n, addr, nil
		}
	}
}

// popReady copies the oldest rebuilt datagram into p.
func (c *FECConn) popReady(p []byte) (int, net.Addr, bool) {
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	if c.readyAt == len(c.ready) {
		return 0, nil, false
	}
	r := c.ready[c.readyAt]
	c.ready[c.readyAt] = fecReady{}
	c.readyAt++
	if c.readyAt == len(c.ready) {
		c.ready, c.readyAt = c.ready[:0], 0
	}
	n := copy(p, r.buf[2:2+r.n])
	c.putBuf(r.buf)
	return n, r.from.udpAddr, true
}

// receive handles one datagram; it returns the payload to deliver, in p,
// when there is one.
func (c *FECConn) receive(p, b []byte, from netip.AddrPort) (int, net.Addr, bool) {
	if len(b) > 0 && b[0]&0x40 != 0 {
		c.stats.plain.Add(1)
		if !c.cfg.acceptPlain {
			return 0, nil, false
		}
		peer := c.peer(from)
		peer.active.Store(c.now())
		peer.plain.Store(true)
		return copy(p, b), peer.udpAddr, true
	}
	f, err := parseFECFrame(b)
	if err != nil {
		if errors.Is(err, errFECTruncated) {
			c.stats.truncated.Add(1)
		} else {
			c.stats.malformed.Add(1)
		}
		return 0, nil, false
	}
	peer := c.peer(from)
	now := c.now()
	peer.active.Store(now)
	peer.plain.Store(false)
	switch f.typ {
	case fecTypeFeedback:
		c.stats.feedbackRecvd.Add(1)
		if rep, ok := peer.send.onFeedback(f.counts, peer.addr); ok && c.cfg.observer != nil {
			c.cfg.observer(rep)
		}
		return 0, nil, false
	case fecTypeParity:
		c.stats.parityReceived.Add(1)
		c.recvMu.Lock()
		c.onParity(peer, &f, now)
		c.recvMu.Unlock()
		return 0, nil, false
	default:
		c.stats.dataReceived.Add(1)
		c.recvMu.Lock()
		deliver := c.onData(peer, &f, now)
		c.recvMu.Unlock()
		if !deliver {
			return 0, nil, false
		}
		return copy(p, f.payload), peer.udpAddr, true
	}
}

// fecReceiver is what is received from one peer; FECConn.recvMu guards it.
type fecReceiver struct {
	win  fecSeqWindow
	ring []fecRecvGroup // fecRing slots by group ID, made on the first protected frame
	held int64
	// recovered and lost count data datagrams rebuilt and lost for good,
	// for the reports.
	recovered, lost uint32
	dirty           bool // frames arrived since the last report
}

// fecRecvGroup is one group being received.
type fecRecvGroup struct {
	id         uint32
	used, done bool
	k, m       int
	count      int // data datagrams in the group, from a parity frame; 0 until one arrives
	shardLen   int // from a parity frame
	opened     int64
	have       uint64 // data datagrams delivered, received or rebuilt
	parityHave uint64
	maxIdx     int
	data       [][]byte // received shards, length prefix included
	parity     [][]byte
}

// onData accounts for a data frame and keeps its shard when its group may
// need it; it reports whether to deliver the payload.
func (c *FECConn) onData(peer *fecPeer, f *fecFrame, now int64) bool {
	r := &peer.recv
	if !r.win.add(f.seq) {
		c.stats.duplicates.Add(1)
		return false
	}
	r.dirty = true
	if f.m == 0 {
		return true
	}
	g := c.slot(r, f.group, f.k, f.m, now)
	if g == nil {
		return true
	}
	bit := uint64(1) << f.index
	if g.have&bit != 0 {
		// Rebuilt already: QUIC has it.
		c.stats.duplicates.Add(1)
		return false
	}
	g.have |= bit
	g.maxIdx = max(g.maxIdx, f.index)
	if g.done {
		return true
	}
	if g.count != 0 && (f.index >= g.count || len(f.shard) > g.shardLen) {
		// It contradicts the group's parity: deliver, QUIC judges it,
		// but the group cannot be repaired.
		c.stats.malformed.Add(1)
		c.endGroup(r, g)
		return true
	}
	if buf := c.hold(r, g); buf != nil {
		g.data[f.index] = append(buf[:0], f.shard...)
	}
	c.repair(peer, g)
	return true
}

// onParity keeps a parity frame's shard and repairs its group when it
// can.
func (c *FECConn) onParity(peer *fecPeer, f *fecFrame, now int64) {
	r := &peer.recv
	if !r.win.add(f.seq) {
		c.stats.duplicates.Add(1)
		return
	}
	r.dirty = true
	g := c.slot(r, f.group, f.k, f.m, now)
	if g == nil || g.done {
		return
	}
	bit := uint64(1) << f.index
	if g.parityHave&bit != 0 {
		c.stats.duplicates.Add(1)
		return
	}
	if g.count == 0 {
		if g.maxIdx >= f.count || !g.shardsFit(len(f.shard)) {
			c.stats.malformed.Add(1)
			c.endGroup(r, g)
			return
		}
		g.count, g.shardLen = f.count, len(f.shard)
	} else if f.count != g.count || len(f.shard) != g.shardLen {
		c.stats.malformed.Add(1)
		c.endGroup(r, g)
		return
	}
	g.parityHave |= bit
	if c.complete(r, g) {
		return
	}
	if buf := c.hold(r, g); buf != nil {
		g.parity[f.index] = append(buf[:0], f.shard...)
	}
	c.repair(peer, g)
}

// shardsFit reports whether every data shard held fits a parity shard of
// n bytes.
func (g *fecRecvGroup) shardsFit(n int) bool {
	for _, d := range g.data {
		if len(d) > n {
			return false
		}
	}
	return true
}

// slot returns the group with ID id, making it in its ring slot, or nil
// when the frame cannot join one: its shape contradicts the group's, or
// the slot holds a newer group.
func (c *FECConn) slot(r *fecReceiver, id uint32, k, m int, now int64) *fecRecvGroup {
	if r.ring == nil {
		r.ring = make([]fecRecvGroup, fecRing)
	}
	g := &r.ring[id%fecRing]
	if g.used && g.id == id {
		if g.k != k || g.m != m {
			c.stats.malformed.Add(1)
			return nil
		}
		return g
	}
	if g.used && int32(id-g.id) < 0 {
		return nil
	}
	// The group in the slot is fecRing groups old: long over.
	c.endGroup(r, g)
	data, parity := g.data, g.parity
	*g = fecRecvGroup{id: id, used: true, k: k, m: m, opened: now}
	g.data = growShards(data, k)
	g.parity = growShards(parity, m)
	return g
}

func growShards(s [][]byte, n int) [][]byte {
	if cap(s) < n {
		return make([][]byte, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// complete ends g when it has all its data; it reports whether it did.
func (c *FECConn) complete(r *fecReceiver, g *fecRecvGroup) bool {
	if g.count == 0 {
		return false
	}
	mask := lowBits(g.count)
	if g.have&mask != mask {
		return false
	}
	c.endGroup(r, g)
	return true
}

func lowBits(n int) uint64 {
	if n >= 64 {
		return math.MaxUint64
	}
	return 1<<n - 1
}

// repair rebuilds g's missing data datagrams when it holds enough shards,
// and queues them for ReadFrom.
func (c *FECConn) repair(peer *fecPeer, g *fecRecvGroup) {
	r := &peer.recv
	if g.done || g.count == 0 || c.complete(r, g) {
		return
	}
	mask := lowBits(g.count)
	var dataHeld, parityHeld int
	for i := range g.count {
		if g.data[i] != nil {
			dataHeld++
		}
	}
	for _, p := range g.parity {
		if p != nil {
			parityHeld++
		}
	}
	missing := g.count - bits.OnesCount64(g.have&mask)
	if dataHeld+parityHeld < g.count || missing == 0 {
		return
	}
	if missing+len(c.ready)-c.readyAt > fecMaxReady {
		return
	}
	for i := range g.count {
		if g.have&(1<<i) != 0 && g.data[i] == nil {
			// Delivered but not held (memory was short): the group
			// cannot be repaired.
			c.endGroup(r, g)
			return
		}
	}
	enc, err := fecCodec(g.k, g.m)
	if err != nil {
		c.stats.malformed.Add(1)
		c.endGroup(r, g)
		return
	}
	shards := c.scratch[:g.k+g.m]
	clear(shards)
	n := g.shardLen
	for i := range g.count {
		if d := g.data[i]; d != nil {
			// Zero-padded to the parity's length, as the sender took it.
			l := len(d)
			d = d[:n]
			clear(d[l:])
			g.data[i], shards[i] = d, d
			continue
		}
		// Missing: the codec rebuilds it into this buffer.
		buf := c.getBuf()
		c.held += int64(cap(buf))
		shards[i] = buf[:0]
	}
	for i := g.count; i < g.k; i++ {
		// Never sent: the sender closed the group early and took them
		// as zeros.
		shards[i] = fecZeros[:n]
	}
	for j, p := range g.parity {
		shards[g.k+j] = p
	}
	err = enc.ReconstructData(shards)
	for i := range g.count {
		if g.have&(1<<i) != 0 {
			continue
		}
		buf := shards[i]
		if err != nil || len(buf) != n {
			c.putBuf(buf)
			continue
		}
		l := int(binary.BigEndian.Uint16(buf))
		if 2+l > n {
			// Garbage in, garbage out: the shards did not belong
			// together.
			c.stats.malformed.Add(1)
			c.putBuf(buf)
			continue
		}
		g.have |= 1 << i
		r.recovered++
		c.stats.recovered.Add(1)
		c.ready = append(c.ready, fecReady{buf: buf, n: l, from: peer})
	}
	clear(shards)
	c.endGroup(r, g)
}

// fecZeros stands in for the data shards of a group that closed early.
// Reconstruction only reads it.
var fecZeros = make([]byte, fecMaxShard)

// hold returns a buffer for a shard of g, or nil when memory is short
// even after dropping the peer's oldest incomplete group.
func (c *FECConn) hold(r *fecReceiver, g *fecRecvGroup) []byte {
	for r.held+fecMaxShard > c.cfg.peerMemory || c.held+fecMaxShard > c.cfg.totalMemory {
		var oldest *fecRecvGroup
		for i := range r.ring {
			o := &r.ring[i]
			if o != g && o.used && !o.done && (oldest == nil || o.opened < oldest.opened) {
				oldest = o
			}
		}
		if oldest == nil {
			return nil
		}
		c.stats.evicted.Add(1)
		c.endGroup(r, oldest)
	}
	buf := c.getBuf()
	r.held += int64(cap(buf))
	c.held += int64(cap(buf))
	return buf
}

// endGroup marks g done, counts the data it lost, and frees its shards.
// The slot stays as a tombstone, so that late frames of the group are
// known for duplicates and do not start it again.
func (c *FECConn) endGroup(r *fecReceiver, g *fecRecvGroup) {
	if !g.used {
		return
	}
	if !g.done {
		n := g.count
		if n == 0 {
			n = g.maxIdx + 1
		}
		if lost := n - bits.OnesCount64(g.have&lowBits(n)); lost > 0 {
			r.lost += uint32(lost)
			c.stats.unrecovered.Add(uint64(lost))
		}
		g.done = true
	}
	c.releaseGroup(r, g)
}

// releaseGroup frees g's shards.
func (c *FECConn) releaseGroup(r *fecReceiver, g *fecRecvGroup) {
	for _, s := range [][][]byte{g.data, g.parity} {
		for i, b := range s {
			if b != nil {
				r.held -= int64(cap(b))
				c.putBuf(b)
				s[i] = nil
			}
		}
	}
}

// getBuf returns a shard buffer of fecMaxShard bytes; c.recvMu is held.
// The caller adds it to c.held.
func (c *FECConn) getBuf() []byte {
	if n := len(c.free); n > 0 {
		b := c.free[n-1]
		c.free = c.free[:n-1]
		return b[:fecMaxShard]
	}
	return make([]byte, fecMaxShard)
}

// putBuf takes back a buffer from getBuf; c.recvMu is held.
func (c *FECConn) putBuf(b []byte) {
	c.held -= int64(cap(b))
	if len(c.free) < fecFreeBuffers {
		c.free = append(c.free, b[:0])
	}
}

// fecSeqWindow tracks the sequence numbers of a peer's frames: it drops
// duplicates and counts the frames expected (the advance of the highest
// number seen), received, and the gaps (runs of missing numbers) as they
// open. A frame that fills a gap later is reordered, not lost.
type fecSeqWindow struct {
	started                  bool
	top                      uint32
	bits                     [fecSeqBits / 64]uint64
	expected, received, gaps uint32
}

// add records frame s; it reports false for a duplicate.
func (w *fecSeqWindow) add(s uint32) bool {
	if !w.started {
		w.reset(s)
		return true
	}
	d := int64(int32(s - w.top))
	switch {
	case d > 0:
		if d > fecSeqJump {
			// The sender restarted, or a long outage: not a loss that
			// repair could have helped with.
			w.reset(s)
			return true
		}
		if d >= fecSeqBits {
			clear(w.bits[:])
		} else {
			for i := uint32(1); i <= uint32(d); i++ {
				w.clearBit(w.top + i)
			}
		}
		w.top = s
		w.setBit(s)
		w.expected += uint32(d)
		w.received++
		if d > 1 {
			w.gaps++
		}
		return true
	case d == 0:
		return false
	case -d >= fecSeqBits:
		if -d > fecSeqJump {
			w.reset(s)
		}
		// Too old to tell from a duplicate: deliver, QUIC drops
		// duplicates, but do not count it.
		return true
	}
	if w.bit(s) {
		return false
	}
	w.setBit(s)
	w.received++
	return true
}

func (w *fecSeqWindow) reset(s uint32) {
	w.started, w.top = true, s
	clear(w.bits[:])
	w.setBit(s)
	w.expected++
	w.received++
}

func (w *fecSeqWindow) bit(s uint32) bool {
	i := s % fecSeqBits
	return w.bits[i/64]&(1<<(i%64)) != 0
}

func (w *fecSeqWindow) setBit(s uint32) {
	i := s % fecSeqBits
	w.bits[i/64] |= 1 << (i % 64)
}

func (w *fecSeqWindow) clearBit(s uint32) {
	i := s % fecSeqBits
	w.bits[i/64] &^= 1 << (i % 64)
}

// fecFrame is a decoded frame. payload and shard alias the datagram.
type fecFrame struct {
	typ         byte
	seq, group  uint32
	k, m, index int
	count       int    // parity: data datagrams in the group
	payload     []byte // data: the datagram
	shard       []byte // data: length and payload; parity: the parity shard
	counts      fecCounts
}

// parseFECFrame decodes one datagram, checking every field against the
// limits and the others before anything is used.
func parseFECFrame(b []byte) (fecFrame, error) {
	var f fecFrame
	if len(b) < 2 {
		return f, errFECTruncated
	}
	if b[0] != fecMagic {
		return f, fmt.Errorf("%w: first byte %#x", errFECMalformed, b[0])
	}
	if v := b[1] >> 4; v != fecVersion {
		return f, fmt.Errorf("%w: version %d", errFECMalformed, v)
	}
	f.typ = b[1] & 0x0f
	switch f.typ {
	case fecTypeData, fecTypeParity:
	case fecTypeFeedback:
		if len(b) < fecFeedbackLen {
			return f, errFECTruncated
		}
		// Bytes past the counts are for later versions of the report.
		f.counts = fecCounts{
			expected:  binary.BigEndian.Uint32(b[2:]),
			received:  binary.BigEndian.Uint32(b[6:]),
			gaps:      binary.BigEndian.Uint32(b[10:]),
			recovered: binary.BigEndian.Uint32(b[14:]),
			lost:      binary.BigEndian.Uint32(b[18:]),
		}
		return f, nil
	default:
		return f, fmt.Errorf("%w: type %d", errFECMalformed, f.typ)
	}
	if len(b) < fecHeaderLen {
		return f, errFECTruncated
	}
	f.seq = binary.BigEndian.Uint32(b[2:])
	f.group = binary.BigEndian.Uint32(b[6:])
	f.k, f.m, f.index = int(b[10]), int(b[11]), int(b[12])
	if f.typ == fecTypeData {
		if len(b) < fecDataHeaderLen {
			return f, errFECTruncated
		}
		n := int(binary.BigEndian.Uint16(b[fecHeaderLen:]))
		switch {
		case n > len(b)-fecDataHeaderLen:
			return f, errFECTruncated
		case n < len(b)-fecDataHeaderLen:
			return f, fmt.Errorf("%w: %d bytes after the payload", errFECMalformed, len(b)-fecDataHeaderLen-n)
		}
		f.shard, f.payload = b[fecHeaderLen:], b[fecDataHeaderLen:]
		if f.m == 0 {
			if f.k != 0 || f.index != 0 || f.group != 0 {
				return f, fmt.Errorf("%w: unprotected datagram with group fields", errFECMalformed)
			}
			return f, nil
		}
		if f.k < 1 || f.k > fecMaxK || f.m > fecMaxM || f.index >= f.k || n > fecMaxPayload {
			return f, fmt.Errorf("%w: data %d of %d+%d, %d bytes", errFECMalformed, f.index, f.k, f.m, n)
		}
		return f, nil
	}
	if len(b) < fecParityHeaderLen+2 {
		return f, errFECTruncated
	}
	f.count = int(b[fecHeaderLen])
	f.shard = b[fecParityHeaderLen:]
	if f.k < 1 || f.k > fecMaxK || f.m < 1 || f.m > fecMaxM || f.index >= f.m ||
		f.count < 1 || f.count > f.k || len(f.shard) > fecMaxShard {
		return f, fmt.Errorf("%w: parity %d of %d+%d for %d datagrams, %d bytes", errFECMalformed, f.index, f.k, f.m, f.count, len(f.shard))
	}
	return f, nil
}

func appendFECHeader(b []byte, typ byte, seq, group uint32, k, m, index int) []byte {
	b = append(b, fecMagic, fecVersion<<4|typ)
	b = binary.BigEndian.AppendUint32(b, seq)
	b = binary.BigEndian.AppendUint32(b, group)
	return append(b, byte(k), byte(m), byte(index))
}

// appendFECData appends a data frame carrying payload.
func appendFECData(b []byte, seq, group uint32, k, m, index int, payload []byte) []byte {
	b = appendFECHeader(b, fecTypeData, seq, group, k, m, index)
	b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
	return append(b, payload...)
}

// appendFECParity appends parity frame index of a group of count data
// datagrams.
func appendFECParity(b []byte, seq, group uint32, k, m, index, count int, shard []byte) []byte {
	b = appendFECHeader(b, fecTypeParity, seq, group, k, m, index)
	b = append(b, byte(count))
	return append(b, shard...)
}

// appendFECFeedback appends a loss report.
func appendFECFeedback(b []byte, fb fecCounts) []byte {
	b = append(b, fecMagic, fecVersion<<4|fecTypeFeedback)
	for _, v := range []uint32{fb.expected, fb.received, fb.gaps, fb.recovered, fb.lost} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}
