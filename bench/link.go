package bench

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The link emulator: a UDP relay between QUIC clients and a server that
// imposes, per direction, what a real path does to datagrams. The kernels
// chunksync is measured on often lack netem, so the relay does it in user
// space.
//
// Every datagram passes through the same stages, in netem's order: loss
// (random or Gilbert–Elliott), the bottleneck (serialisation at Rate
// behind a drop-tail queue), propagation (Delay ± Jitter), then
// reordering and duplication. Timing is analytic: each packet's delivery
// time is computed on arrival, and one scheduler per direction sends
// packets when their time comes, from a heap ordered by that time, on one
// timer. A late wake-up therefore sends a few packets back to back but
// never slows the link down. On Linux the kernel stamps each datagram with
// the time it arrived, and the link reckons from that stamp, not from when
// its reader got to the datagram: a reader that was not running for a few
// milliseconds would otherwise see the datagrams that waited for it as one
// burst, and its queue would fill and drop sooner than the link it
// imitates. The link shares the machine with both ends of what it
// carries, so it reads and writes bursts with one system call each where
// the kernel can (linksock_linux.go).

const (
	// maxDatagram is the largest UDP payload the link relays.
	maxDatagram = 64 << 10
	// DefaultReorderDelay is how long a packet that LinkProfile.Reorder
	// picks is held back when ReorderDelay is zero: at 100 Mbit/s some
	// fifty full-size packets overtake it, well past QUIC's threshold of
	// three, so that QUIC sees reordering it must tolerate.
	DefaultReorderDelay = 5 * time.Millisecond
	// defaultQueueTime sizes the default drop-tail queue: this long at the
	// link's rate, about one bandwidth-delay product of a continental path.
	defaultQueueTime = 50 * time.Millisecond
	// minDefaultQueue is the smallest default queue, so that slow links
	// still absorb a burst of a few dozen packets.
	minDefaultQueue = 64 << 10
	// fullPacket is the size of a full-size packet on the paths the link
	// imitates, Ethernet's MTU.
	fullPacket = 1500
	// minQueue is the smallest queue a profile may ask for: one
	// full-size packet. A smaller one would drop every packet.
	minQueue = fullPacket
	// minRate bounds the serialisation time of one packet (64 KiB at 1000
	// bits/s is under 9 minutes), so that the time arithmetic cannot
	// overflow.
	minRate = 1000
	// flowIdle is how long a client may stay silent, both ways, before the
	// link closes the upstream socket it opened for it, as a NAT does. It
	// is longer than QUIC's idle timeouts, so a live connection never
	// loses its mapping.
	flowIdle = 3 * time.Minute
	// maxHeld bounds the memory of the datagrams one direction holds for
	// their delivery time (a gigabit held for 2 s), so that a long delay
	// on a fast sender cannot exhaust the process's memory.
	maxHeld = 256 << 20
	// socketBuffer is the receive and send buffer the link asks for on its
	// sockets: a loopback sender at a gigabit fills the 208 KiB default in
	// under 2 ms.
	socketBuffer = 4 << 20
	// maxArrivalLag bounds how far before its read a datagram's arrival
	// stamp may put it, against a wall clock stepped while it waited.
	maxArrivalLag = time.Second
	// maxSegmentedBytes bounds one write of several datagrams, within the
	// 64 KiB of one IP packet that the kernel segments.
	maxSegmentedBytes = 60 << 10
)

// GilbertElliott is the two-state Markov model of bursty packet loss: the
// link is either good or bad, moves between the two with a fixed
// probability at every step, and loses a packet with the probability of
// the state it is in. A Gilbert model (LossGood 0, LossBad 1) loses
// exactly the packets that arrive in the bad state, so its bursts of
// consecutive losses last 1/BadToGood packets on average when packets
// come one a step.
//
// On a link with a Rate, a step is a slot of time: what a full-size
// packet (1500 bytes) takes at the rate. Each packet takes the next slot,
// as it would on the wire, and slots that pass with nothing to send are
// steps too, so the bad state lasts a stretch of time whatever the
// traffic (see geState). A link that sends back to back loses bursts of
// 1/BadToGood packets; a sender that falls silent finds the link as
// likely to be bad as ever, MeanLoss, when it sends again. Without a Rate
// the chain steps once per packet.
type GilbertElliott struct {
	// GoodToBad is the probability, at each step, that a good link turns
	// bad.
	GoodToBad float64
	// BadToGood is the probability, at each step, that a bad link turns
	// good again.
	BadToGood float64
	// LossGood and LossBad are the probabilities that a packet is lost in
	// each state.
	LossGood, LossBad float64
}

// BurstLoss returns the Gilbert model that loses, in the long run, the
// fraction loss of all packets, in bursts of meanBurst consecutive packets
// on average. Random loss at the same rate has bursts of 1/(1-loss).
// The model cannot lose more than meanBurst/(meanBurst+1) of the packets.
func BurstLoss(loss, meanBurst float64) (*GilbertElliott, error) {
	if !(loss >= 0 && loss < 1) {
		return nil, fmt.Errorf("burst loss: loss %v: want a probability in [0, 1)", loss)
	}
	if !(meanBurst >= 1) || math.IsInf(meanBurst, 0) {
		return nil, fmt.Errorf("burst loss: mean burst %v: want a length of at least 1 packet", meanBurst)
	}
	// The stationary share of the bad state is p/(p+r), which is the loss
	// rate, and a stay in the bad state lasts 1/r packets.
	r := 1 / meanBurst
	p := loss * r / (1 - loss)
	if p > 1 {
		return nil, fmt.Errorf("burst loss: loss %v with a mean burst of %v packets is impossible: the most a burst of that length allows is %.3g",
			loss, meanBurst, meanBurst/(meanBurst+1))
	}
	return &GilbertElliott{GoodToBad: p, BadToGood: r, LossBad: 1}, nil
}

// MeanLoss returns the long-run fraction of packets the model loses.
func (g *GilbertElliott) MeanLoss() float64 {
	if g.GoodToBad+g.BadToGood == 0 {
		return g.LossGood
	}
	bad := g.GoodToBad / (g.GoodToBad + g.BadToGood)
	return (1-bad)*g.LossGood + bad*g.LossBad
}

// validate checks every probability; name prefixes the field names.
func (g *GilbertElliott) validate(name string) error {
	for _, f := range []struct {
		field string
		v     float64
	}{{"GoodToBad", g.GoodToBad}, {"BadToGood", g.BadToGood}, {"LossGood", g.LossGood}, {"LossBad", g.LossBad}} {
		if err := checkProbability(name+"."+f.field, f.v); err != nil {
			return err
		}
	}
	if g.GoodToBad > 0 && g.BadToGood == 0 {
		return fmt.Errorf("%s.BadToGood 0 with GoodToBad %v: the link would stay bad for ever once it turned bad", name, g.GoodToBad)
	}
	return nil
}

// geState is the state of a Gilbert–Elliott model as it runs, on the
// clock of the link's wire.
//
// The chain steps once per slot of the wire, the time a full-size packet
// takes at the link's rate, not once per packet, because a real bursty
// link (radio fading, impulse noise on a line, a flapping path) is bad for
// a stretch of time whatever crosses it. A chain that steps only when a
// packet comes stays bad while the sender is silent: a TCP sender whose
// window was lost waits for its retransmission timeout, sends one packet,
// loses it to the same bad state, and waits twice as long, so at 5% in
// bursts of 4 CUBIC never finished. A chain on a clock of wall time alone
// would go wrong the other way: the packets a sender hands the link
// faster than its rate would share one state, and a burst would take
// dozens of them. On the wire each packet has a slot of its own, the
// ones that came early wait in the queue for theirs, and slots with no
// packet still pass: that is the clock here. So a link kept busy loses
// bursts of the asked length in packets, a link left idle forgets its
// state as the real one does, and either way the share of packets lost is
// the chain's stationary share, the asked mean.
type geState struct {
	bad bool
	// slot is the length of a step in link nanoseconds, 0 on a link
	// without a rate, where the chain steps once per packet.
	slot int64
	// next is the link time at which the next free slot of the wire
	// begins; maxLead bounds how far it may run ahead of the arrivals.
	next, maxLead int64
}

// start draws the first state from the model's stationary distribution, so
// that a short run sees the mean loss from its first packet. A rate of
// bits per second gives the chain its clock; queue, in bytes, is the most
// the wire can be behind: a packet that would wait longer is dropped by
// the queue anyway.
func (s *geState) start(g *GilbertElliott, rng *rand.Rand, rate, queue int64) {
	if g.GoodToBad+g.BadToGood > 0 {
		s.bad = rng.Float64() < g.GoodToBad/(g.GoodToBad+g.BadToGood)
	}
	if rate > 0 {
		s.slot = max(1, fullPacket*8e9/rate)
		s.maxLead = int64(float64(queue) * 8e9 / float64(rate))
	}
}

// lose decides the fate of one packet that arrives at now (link time;
// the sockets of a direction stamp their datagrams apart, so now may go
// back a little from call to call, and then no slot went by empty): the
// chain first passes the slots that went by empty, then the packet takes
// the next slot in the state the chain is in, and the chain moves on by
// that slot.
func (s *geState) lose(g *GilbertElliott, rng *rand.Rand, now int64) bool {
	if s.slot > 0 {
		if idle := (now - s.next) / s.slot; idle > 0 {
			s.step(g, rng, idle)
			s.next += idle * s.slot
		}
		// The wire's clock runs ahead of arrivals that come faster than
		// the rate, by the backlog they build, which the queue bounds.
		s.next = min(s.next, now+s.maxLead) + s.slot
	}
	loss := g.LossGood
	if s.bad {
		loss = g.LossBad
	}
	lost := rng.Float64() < loss
	s.step(g, rng, 1)
	return lost
}

// step moves the chain on by n steps at once. After n steps the chain is
// bad with probability π + (s − π)·(1 − p − r)^n, where p is GoodToBad, r
// BadToGood, π = p/(p+r) the stationary share of the bad state and s 1
// when it starts bad and 0 otherwise; for n = 1 that is 1 − r from bad and
// p from good, the plain transition.
func (s *geState) step(g *GilbertElliott, rng *rand.Rand, n int64) {
	sum := g.GoodToBad + g.BadToGood
	if sum == 0 {
		// Neither state is ever left.
		return
	}
	pi := g.GoodToBad / sum
	from := 0.0
	if s.bad {
		from = 1
	}
	s.bad = rng.Float64() < pi+(from-pi)*math.Pow(1-sum, float64(n))
}

// LinkProfile is what one direction of a link does to the datagrams that
// cross it. The zero value relays every datagram at once.
type LinkProfile struct {
	// Loss is the probability that a datagram is dropped, independently
	// of every other.
	Loss float64
	// Burst, when not nil, drops datagrams by a Gilbert–Elliott model
	// instead of Loss (set one or the other); BurstLoss builds one from
	// an average loss rate and a mean burst length.
	Burst *GilbertElliott
	// Delay is the one-way propagation delay.
	Delay time.Duration
	// Jitter spreads each datagram's delay uniformly over Delay ± Jitter,
	// as netem does by default; it must not exceed Delay. Jitter never
	// reorders: a datagram that would overtake the one before it leaves
	// with it, which raises the mean delay by up to Jitter when
	// datagrams come closer together than the jitter.
	Jitter time.Duration
	// Rate is the bottleneck's bandwidth in bits per second; 0 is no
	// limit. Datagrams wait in a queue for their turn and then take
	// their size at Rate to pass.
	Rate int64
	// Queue bounds the bottleneck's queue, in bytes: a datagram that
	// would make it exceed Queue is dropped (drop-tail). 0 is the
	// default, 50 ms at Rate and at least 64 KiB. It needs a Rate.
	Queue int
	// Reorder is the probability that a datagram is held back by
	// ReorderDelay beyond its due time, so that the ones after it
	// overtake it. It is the only source of reordering.
	Reorder float64
	// ReorderDelay is how long Reorder holds a datagram back; 0 is
	// DefaultReorderDelay.
	ReorderDelay time.Duration
	// Duplicate is the probability that a datagram is delivered twice.
	// The copy does not take the bottleneck's bandwidth.
	Duplicate float64
}

// validate checks the profile; name prefixes the field names in errors.
func (p LinkProfile) validate(name string) error {
	for _, f := range []struct {
		field string
		v     float64
	}{{"Loss", p.Loss}, {"Reorder", p.Reorder}, {"Duplicate", p.Duplicate}} {
		if err := checkProbability(name+"."+f.field, f.v); err != nil {
			return err
		}
	}
	if p.Burst != nil {
		if p.Loss != 0 {
			return fmt.Errorf("%s.Loss %v and %s.Burst are both set: set one, Burst already holds its loss rate", name, p.Loss, name)
		}
		if err := p.Burst.validate(name + ".Burst"); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		field string
		v     time.Duration
	}{{"Delay", p.Delay}, {"Jitter", p.Jitter}, {"ReorderDelay", p.ReorderDelay}} {
		if f.v < 0 {
			return fmt.Errorf("%s.%s %v: want a duration of 0 or more", name, f.field, f.v)
		}
	}
	if p.Jitter > p.Delay {
		return fmt.Errorf("%s.Jitter %v exceeds %s.Delay %v: a datagram's delay cannot go below zero", name, p.Jitter, name, p.Delay)
	}
	if p.ReorderDelay > 0 && p.Reorder == 0 {
		return fmt.Errorf("%s.ReorderDelay %v without %s.Reorder: nothing would be held back", name, p.ReorderDelay, name)
	}
	if p.Rate < 0 || p.Rate > 0 && p.Rate < minRate {
		return fmt.Errorf("%s.Rate %d bits/s: want 0 (no limit) or at least %d", name, p.Rate, minRate)
	}
	if p.Queue < 0 || p.Queue > 0 && p.Queue < minQueue {
		return fmt.Errorf("%s.Queue %d bytes: want 0 (the default) or at least %d, one full-size packet", name, p.Queue, minQueue)
	}
	if p.Queue > 0 && p.Rate == 0 {
		return fmt.Errorf("%s.Queue %d bytes without %s.Rate: only a rate limit fills a queue", name, p.Queue, name)
	}
	return nil
}

// checkProbability refuses what is not a probability, NaN included.
func checkProbability(field string, v float64) error {
	if !(v >= 0 && v <= 1) {
		return fmt.Errorf("%s %v: want a probability between 0 and 1", field, v)
	}
	return nil
}

// LinkConfig is the whole link: a profile for each direction and the seed
// of its random decisions.
type LinkConfig struct {
	// Up is what happens to datagrams from the clients to the upstream
	// server, Down to those from the server back to the clients.
	Up, Down LinkProfile
	// Seed seeds every random decision. Each direction and each kind of
	// decision (loss, jitter, reordering, duplication) draws from its own
	// stream, so two runs with the same seed that see the same datagrams
	// arrive in the same order make the same decisions (burst loss on a
	// direction with a Rate also needs them at the same times: its chain
	// runs on the wire's clock), and turning on duplication does not
	// change which datagrams are lost.
	Seed uint64
}

// Validate reports the first setting that is out of range, naming its
// field (for example "Up.Loss").
func (c LinkConfig) Validate() error {
	if err := c.Up.validate("Up"); err != nil {
		return fmt.Errorf("link config: %w", err)
	}
	if err := c.Down.validate("Down"); err != nil {
		return fmt.Errorf("link config: %w", err)
	}
	return nil
}

// LinkStats counts what one direction of a link did with the datagrams it
// received, since the link started.
type LinkStats struct {
	// Received and ReceivedBytes count the datagrams read from the
	// sending side.
	Received, ReceivedBytes uint64
	// Delivered and DeliveredBytes count the datagrams written to the
	// receiving side, duplicates included.
	Delivered, DeliveredBytes uint64
	// DroppedLoss counts the datagrams dropped by Loss or Burst,
	// DroppedQueue those dropped because the bottleneck's queue was full,
	// or because the direction already held 256 MiB of datagrams waiting
	// for their delivery time, DroppedDown those due while the link was
	// down (Link.SetDown).
	DroppedLoss, DroppedQueue, DroppedDown uint64
	// Duplicated counts the datagrams sent twice, Reordered those held
	// back to be overtaken.
	Duplicated, Reordered uint64
	// Failed counts the deliveries that failed: the upstream socket
	// could not be opened or a write failed (a closed port, a flow that
	// expired).
	Failed uint64
}

// linkCounters are a direction's LinkStats as they change.
type linkCounters struct {
	received, receivedBytes   atomic.Uint64
	delivered, deliveredBytes atomic.Uint64
	droppedLoss, droppedQueue atomic.Uint64
	droppedDown               atomic.Uint64
	duplicated, reordered     atomic.Uint64
	failed                    atomic.Uint64
}

func (c *linkCounters) load() LinkStats {
	return LinkStats{
		Received: c.received.Load(), ReceivedBytes: c.receivedBytes.Load(),
		Delivered: c.delivered.Load(), DeliveredBytes: c.deliveredBytes.Load(),
		DroppedLoss: c.droppedLoss.Load(), DroppedQueue: c.droppedQueue.Load(), DroppedDown: c.droppedDown.Load(),
		Duplicated: c.duplicated.Load(), Reordered: c.reordered.Load(),
		Failed: c.failed.Load(),
	}
}

// Link is a running link emulator: a UDP socket that clients send to as if
// it were the server, and that relays their datagrams to the upstream
// address, and the answers back, through the two directions' profiles.
// Each client address gets its own upstream socket, as behind a NAT, so
// the server sees as many peers as there are clients. A link may relay
// more than one port (AddPort); all share its two directions, as the
// ports of one host share the path to it.
type Link struct {
	ports    []*linkPort // the first is Addr's
	start    time.Time
	up, down *linkDirection

	// unplugged drops every datagram due while it is set (SetDown).
	unplugged atomic.Bool
	serving   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// linkPort is one socket clients send to and the address it relays to.
type linkPort struct {
	conn     *net.UDPConn
	upstream *net.UDPAddr
}

// ListenLink opens a link on the UDP address listen that relays to the UDP
// address upstream. It checks cfg and starts nothing: Serve relays.
func ListenLink(listen, upstream string, cfg LinkConfig) (*Link, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	port, err := listenLinkPort(listen, upstream)
	if err != nil {
		return nil, err
	}
	return &Link{
		ports: []*linkPort{port},
		start: time.Now(),
		up:    newLinkDirection(cfg.Up, cfg.Seed, 1, true),
		down:  newLinkDirection(cfg.Down, cfg.Seed, 2, false),
	}, nil
}

// AddPort has the link also relay what clients send to the UDP address
// listen to the address upstream, through the same two directions: the
// same bottleneck, delay and losses as the first port. It returns the
// address clients send to. Call it before Serve.
func (l *Link) AddPort(listen, upstream string) (net.Addr, error) {
	if l.serving.Load() {
		return nil, errors.New("link: AddPort after Serve")
	}
	port, err := listenLinkPort(listen, upstream)
	if err != nil {
		return nil, err
	}
	l.ports = append(l.ports, port)
	return port.conn.LocalAddr(), nil
}

// listenLinkPort opens the client-facing socket of a port.
func listenLinkPort(listen, upstream string) (*linkPort, error) {
	up, err := net.ResolveUDPAddr("udp", upstream)
	if err != nil {
		return nil, fmt.Errorf("link upstream %s: %w", upstream, err)
	}
	laddr, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		return nil, fmt.Errorf("link listen %s: %w", listen, err)
	}
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("link listen %s: %w", listen, err)
	}
	if err := prepareSocket(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("link listen %s: %w", listen, err)
	}
	return &linkPort{conn: conn, upstream: up}, nil
}

// setSocketBuffers asks for large socket buffers. The kernel caps them at
// its maximum (net.core.rmem_max and wmem_max) without saying so; a link
// with smaller buffers still works, it drops bursts sooner.
func setSocketBuffers(c *net.UDPConn) {
	c.SetReadBuffer(socketBuffer)
	c.SetWriteBuffer(socketBuffer)
}

// prepareSocket readies one of the link's sockets: large buffers,
// arrival stamps and segmented reads.
func prepareSocket(c *net.UDPConn) error {
	setSocketBuffers(c)
	if err := tuneLinkSocket(c); err != nil {
		return fmt.Errorf("arrival stamps and segments: %w", err)
	}
	return nil
}

// arrival reads the control messages oob of one read: the link time its
// datagrams arrived, and the size of their segments (0 for one datagram).
func (l *Link) arrival(oob []byte) (now int64, segment int) {
	lag, segment := readControl(oob)
	return l.now() - int64(lag), segment
}

// datagrams yields the datagrams that b holds: several of segment bytes
// each but the last, or b alone when segment is 0 or at least len(b).
func datagrams(b []byte, segment int) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for {
			n := len(b)
			if segment > 0 {
				n = min(segment, n)
			}
			if !yield(b[:n]) {
				return
			}
			if b = b[n:]; len(b) == 0 {
				return
			}
		}
	}
}

// writeEach sends b, datagrams of segment bytes each but the last, to to,
// or on c's connection when to is not valid, one write apiece.
func writeEach(c *net.UDPConn, b []byte, segment int, to netip.AddrPort) error {
	for dg := range datagrams(b, segment) {
		var err error
		if to.IsValid() {
			_, err = c.WriteToUDPAddrPort(dg, to)
		} else {
			_, err = c.Write(dg)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Addr is the address clients send to (of the first port).
func (l *Link) Addr() net.Addr { return l.ports[0].conn.LocalAddr() }

// Stats returns the counts of each direction so far. It may be called at
// any time, from any goroutine, also while Serve runs.
func (l *Link) Stats() (up, down LinkStats) {
	return l.up.counters.load(), l.down.counters.load()
}

// Close closes the client-facing sockets, which ends Serve if it runs.
// Serve still owns its goroutines: wait for Serve to return to know they
// are gone. Close may be called more than once.
func (l *Link) Close() error {
	l.closeOnce.Do(func() {
		var errs []error
		for _, p := range l.ports {
			errs = append(errs, p.conn.Close())
		}
		l.closeErr = errors.Join(errs...)
	})
	return l.closeErr
}

// SetDown takes the link down (true) or brings it back up (false), as a
// cable pulled and plugged in again: while it is down, every datagram due
// for delivery either way is dropped and counted in DroppedDown, those
// that were crossing the link when it went down included. The flows stay,
// so a client that keeps its socket is relayed as before once the link
// is up. It may be called at any time, from any goroutine.
func (l *Link) SetDown(down bool) { l.unplugged.Store(down) }

// errLinkDown is deliver's error for a datagram due while the link is down.
var errLinkDown = errors.New("link down")

// now is the link's clock: monotonic nanoseconds since it was opened.
func (l *Link) now() int64 { return int64(time.Since(l.start)) }

// deliver writes the datagrams b to the receiving side of a direction:
// up to the upstream server on the client's flow, down to the client.
func (l *Link) deliver(up bool, f *linkFlow, b []byte, segment int) error {
	if l.unplugged.Load() {
		return errLinkDown
	}
	if up {
		return writeSegments(f.conn, b, segment, netip.AddrPort{})
	}
	return writeSegments(f.port.conn, b, segment, f.client)
}

// maxSegments is the most datagrams deliver takes at once.
func (l *Link) maxSegments() int { return maxSegments }

// linkEnds is what a direction needs of the link that carries it: its
// clock and a way to hand a datagram to the receiving side. Link relays
// UDP datagrams between sockets, TUNLink IP packets between TUN devices;
// the directions' impairments are the same code for both.
type linkEnds interface {
	// now is the link's clock in nanoseconds.
	now() int64
	// deliver writes datagrams to the receiving side of the direction up
	// (towards the upstream server or side B) or down: b holds one, or
	// several of segment bytes each but the last, all of flow f (nil on a
	// link without flows).
	deliver(up bool, f *linkFlow, b []byte, segment int) error
	// maxSegments is the most datagrams deliver takes at once.
	maxSegments() int
}

// linkFlow is one client's mapping: the socket the link opened towards the
// upstream server for it.
type linkFlow struct {
	client netip.AddrPort
	port   *linkPort // the port the client sends to
	conn   *net.UDPConn
	// seen is the link time of the last datagram either way, for expiry.
	seen atomic.Int64
}

// Serve relays until ctx is done or Close is called, then closes the
// link's sockets and returns once every goroutine it started has ended.
// Datagrams still waiting for their delivery time are dropped. It returns
// nil after a cancel or a Close, and the error otherwise; it may run once.
func (l *Link) Serve(ctx context.Context) error {
	if !l.serving.CompareAndSwap(false, true) {
		return errors.New("link: Serve called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	var wg sync.WaitGroup
	for _, d := range []*linkDirection{l.up, l.down} {
		if !d.immediate {
			wg.Go(func() { d.schedule(ctx, l) })
		}
	}
	// One reader per port; the first to stop (the sockets closed, or an
	// error) stops the others.
	errs := make([]error, len(l.ports))
	var readers sync.WaitGroup
	for i, p := range l.ports {
		readers.Go(func() {
			flows := make(map[netip.AddrPort]*linkFlow)
			errs[i] = l.readClients(p, flows, &wg)
			cancel()
			l.Close()
			for _, f := range flows {
				f.conn.Close()
			}
		})
	}
	readers.Wait()
	wg.Wait()
	l.up.discard()
	l.down.discard()
	return errors.Join(errs...)
}

// readClients relays what clients send to port until its socket is
// closed. It owns flows, the port's clients' mappings; the flows' readers
// join wg.
func (l *Link) readClients(port *linkPort, flows map[netip.AddrPort]*linkFlow, wg *sync.WaitGroup) error {
	buf := make([]byte, maxDatagram)
	oob := make([]byte, linkControlSpace)
	lastSweep := l.now()
	for {
		n, oobn, _, from, err := port.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				// An ICMP error for a datagram sent to a client that is
				// gone; only some kernels report them on this socket.
				continue
			}
			return fmt.Errorf("link %s: read from clients: %w", port.conn.LocalAddr(), err)
		}
		now, segment := l.arrival(oob[:oobn])
		f := flows[from]
		if f == nil {
			if f, err = openFlow(port, from); err != nil {
				// The client's datagrams cannot go anywhere; the next
				// read tries again.
				for dg := range datagrams(buf[:n], segment) {
					l.up.counters.received.Add(1)
					l.up.counters.receivedBytes.Add(uint64(len(dg)))
					l.up.counters.failed.Add(1)
				}
				continue
			}
			flows[from] = f
			wg.Go(func() { l.readUpstream(f) })
		}
		f.seen.Store(now)
		l.up.arriveAll(l, now, f, buf[:n], segment)
		if now-lastSweep > int64(flowIdle/4) {
			lastSweep = now
			for addr, f := range flows {
				if now-f.seen.Load() > int64(flowIdle) {
					f.conn.Close()
					delete(flows, addr)
				}
			}
		}
	}
}

// openFlow opens the upstream socket of a new client of port.
func openFlow(port *linkPort, client netip.AddrPort) (*linkFlow, error) {
	conn, err := net.DialUDP("udp", nil, port.upstream)
	if err != nil {
		return nil, fmt.Errorf("link: upstream socket for %s: %w", client, err)
	}
	if err := prepareSocket(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("link: upstream socket for %s: %w", client, err)
	}
	return &linkFlow{client: client, port: port, conn: conn}, nil
}

// readUpstream relays what the server sends to one client until the flow's
// socket is closed.
func (l *Link) readUpstream(f *linkFlow) {
	buf := make([]byte, maxDatagram)
	oob := make([]byte, linkControlSpace)
	for {
		n, oobn, _, _, err := f.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			// A connected UDP socket reports an ICMP "port unreachable"
			// (a server not listening yet, or gone) on its next read; the
			// flow stays, as a NAT mapping would.
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue
			}
			return
		}
		now, segment := l.arrival(oob[:oobn])
		f.seen.Store(now)
		l.down.arriveAll(l, now, f, buf[:n], segment)
	}
}

// linkDirection is one direction of a link: its profile, the state of its
// random decisions and bottleneck, and the datagrams waiting for their
// delivery time.
type linkDirection struct {
	p         LinkProfile
	up        bool  // towards the upstream server
	immediate bool  // no datagram waits: deliver on arrival, no scheduler
	queue     int64 // bytes, resolved default
	reorderNs int64
	counters  linkCounters

	// wake tells the scheduler that a datagram became the earliest.
	wake chan struct{}

	mu sync.Mutex // guards the fields below
	// One stream per kind of decision, so that enabling one feature does
	// not shift the others' draws.
	lossRNG, jitterRNG, reorderRNG, dupRNG *rand.Rand
	ge                                     geState
	busyUntil                              int64 // when the bottleneck has sent all it holds
	last                                   int64 // latest delivery time of an in-order datagram
	seq                                    uint64
	pending                                linkHeap
	held                                   int64 // bytes of buffers in pending
}

// Decision streams of a direction, for the PCG's second seed word.
const (
	streamLoss = iota + 1
	streamJitter
	streamReorder
	streamDup
)

func newLinkDirection(p LinkProfile, seed, dir uint64, up bool) *linkDirection {
	rng := func(kind uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, dir<<32|kind)) }
	d := &linkDirection{
		p:          p,
		up:         up,
		immediate:  p.Delay == 0 && p.Rate == 0 && p.Reorder == 0,
		reorderNs:  int64(p.ReorderDelay),
		wake:       make(chan struct{}, 1),
		lossRNG:    rng(streamLoss),
		jitterRNG:  rng(streamJitter),
		reorderRNG: rng(streamReorder),
		dupRNG:     rng(streamDup),
	}
	if d.reorderNs == 0 {
		d.reorderNs = int64(DefaultReorderDelay)
	}
	if p.Rate > 0 {
		d.queue = int64(p.Queue)
		if d.queue == 0 {
			d.queue = max(minDefaultQueue, int64(defaultQueueTime.Seconds()*float64(p.Rate)/8))
		}
	}
	if p.Burst != nil {
		d.ge.start(p.Burst, d.lossRNG, p.Rate, d.queue)
	}
	return d
}

// pendingDatagram is a datagram waiting for its delivery time.
type pendingDatagram struct {
	at     int64  // link time
	seq    uint64 // arrival order, which breaks ties in at
	buf    *[]byte
	flow   *linkFlow
	copies int
}

// arriveAll hands arrive the datagrams of one read: b holds one, or
// several of segment bytes each but the last, all arrived at now.
func (d *linkDirection) arriveAll(l linkEnds, now int64, f *linkFlow, b []byte, segment int) {
	for dg := range datagrams(b, segment) {
		d.arrive(l, now, f, dg)
	}
}

// arrive decides the fate of datagram b that arrived at now on flow f:
// drop it, deliver it at once, or queue it for its time. b is only borrowed.
func (d *linkDirection) arrive(l linkEnds, now int64, f *linkFlow, b []byte) {
	n := int64(len(b))
	d.counters.received.Add(1)
	d.counters.receivedBytes.Add(uint64(n))

	d.mu.Lock()
	switch {
	case d.p.Burst != nil && d.ge.lose(d.p.Burst, d.lossRNG, now),
		d.p.Burst == nil && d.p.Loss > 0 && d.lossRNG.Float64() < d.p.Loss:
		d.mu.Unlock()
		d.counters.droppedLoss.Add(1)
		return
	}
	at := now
	if d.p.Rate > 0 {
		// The bytes still queued are the bottleneck's backlog in time,
		// at its rate.
		backlog := float64(max(0, d.busyUntil-now)) * float64(d.p.Rate) / 8e9
		if backlog+float64(n) > float64(d.queue) {
			d.mu.Unlock()
			d.counters.droppedQueue.Add(1)
			return
		}
		d.busyUntil = max(now, d.busyUntil) + int64(float64(n)*8e9/float64(d.p.Rate))
		at = d.busyUntil
	}
	at += int64(d.p.Delay)
	if d.p.Jitter > 0 {
		j := int64(d.p.Jitter)
		at += d.jitterRNG.Int64N(2*j+1) - j
	}
	copies := 1
	if d.p.Duplicate > 0 && d.dupRNG.Float64() < d.p.Duplicate {
		copies = 2
	}
	if d.p.Reorder > 0 && d.reorderRNG.Float64() < d.p.Reorder {
		// Held back, and not a bound for the ones after it, which is
		// what lets them overtake.
		at += d.reorderNs
		d.counters.reordered.Add(1)
	} else {
		at = max(at, d.last)
		d.last = at
	}
	if copies == 2 {
		d.counters.duplicated.Add(1)
	}
	if d.immediate {
		d.mu.Unlock()
		for range copies {
			d.send(l, f, b, len(b), 1)
		}
		return
	}
	if d.held+int64(len(b)) > maxHeld {
		d.mu.Unlock()
		d.counters.droppedQueue.Add(1)
		return
	}
	buf := getLinkBuffer(len(b))
	copy(*buf, b)
	d.held += int64(cap(*buf))
	d.seq++
	d.pending.push(pendingDatagram{at: at, seq: d.seq, buf: buf, flow: f, copies: copies})
	first := d.pending[0].seq == d.seq
	d.mu.Unlock()
	if first {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// schedule sends the direction's datagrams when their time comes, until
// ctx is done.
func (d *linkDirection) schedule(ctx context.Context, l linkEnds) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var due []pendingDatagram
	// batch holds a run of due datagrams written together.
	batch := make([]byte, 0, maxSegmentedBytes)
	for {
		d.mu.Lock()
		now := l.now()
		for len(d.pending) > 0 && d.pending[0].at <= now {
			p := d.pending.pop()
			d.held -= int64(cap(*p.buf))
			due = append(due, p)
		}
		wait := int64(-1)
		if len(d.pending) > 0 {
			wait = d.pending[0].at - now
		}
		d.mu.Unlock()
		if len(due) > 0 {
			for i := 0; i < len(due); {
				p := &due[i]
				n := segmentRun(due[i:], l.maxSegments())
				if n == 1 {
					for range p.copies {
						d.send(l, p.flow, *p.buf, len(*p.buf), 1)
					}
				} else {
					batch = batch[:0]
					for _, q := range due[i : i+n] {
						batch = append(batch, *q.buf...)
					}
					d.send(l, p.flow, batch, len(*p.buf), n)
				}
				for j := i; j < i+n; j++ {
					putLinkBuffer(due[j].buf)
					due[j] = pendingDatagram{}
				}
				i += n
			}
			due = due[:0]
			// Sending took time: look again before sleeping.
			continue
		}
		if wait >= 0 {
			timer.Reset(time.Duration(wait))
		}
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// segmentRun is how many datagrams from the start of due can go in one
// write of at most limit: those of one flow, sent once, all as long as the
// first but the last, which may be shorter, up to maxSegmentedBytes.
func segmentRun(due []pendingDatagram, limit int) int {
	first := due[0]
	size := len(*first.buf)
	if first.copies != 1 || size == 0 {
		return 1
	}
	n, total := 1, size
	for n < len(due) && n < limit {
		q := due[n]
		if q.flow != first.flow || q.copies != 1 || len(*q.buf) > size || len(*q.buf) == 0 || total+len(*q.buf) > maxSegmentedBytes {
			break
		}
		n++
		total += len(*q.buf)
		if len(*q.buf) < size {
			break
		}
	}
	return n
}

// send writes n datagrams b, of segment bytes each but the last, to the
// direction's receiving side.
func (d *linkDirection) send(l linkEnds, f *linkFlow, b []byte, segment, n int) {
	if err := l.deliver(d.up, f, b, segment); errors.Is(err, errLinkDown) {
		d.counters.droppedDown.Add(uint64(n))
		return
	} else if err != nil {
		d.counters.failed.Add(uint64(n))
		return
	}
	d.counters.delivered.Add(uint64(n))
	d.counters.deliveredBytes.Add(uint64(len(b)))
}

// discard drops what is still pending, once the scheduler has stopped.
func (d *linkDirection) discard() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.pending {
		putLinkBuffer(p.buf)
	}
	clear(d.pending)
	d.pending = d.pending[:0]
	d.held = 0
}

// linkHeap is a binary min-heap of pending datagrams by delivery time,
// then arrival. It is written out rather than built on container/heap,
// whose interface boxes every element pushed.
type linkHeap []pendingDatagram

func (h linkHeap) less(i, j int) bool {
	return h[i].at < h[j].at || h[i].at == h[j].at && h[i].seq < h[j].seq
}

func (h *linkHeap) push(p pendingDatagram) {
	*h = append(*h, p)
	q := *h
	for i := len(q) - 1; i > 0; {
		parent := (i - 1) / 2
		if !q.less(i, parent) {
			break
		}
		q[i], q[parent] = q[parent], q[i]
		i = parent
	}
}

func (h *linkHeap) pop() pendingDatagram {
	q := *h
	top := q[0]
	last := len(q) - 1
	q[0] = q[last]
	q[last] = pendingDatagram{}
	q = q[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(q) && q.less(l, m) {
			m = l
		}
		if r < len(q) && q.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		q[i], q[m] = q[m], q[i]
		i = m
	}
	*h = q
	return top
}

// linkBufferSizes are the size classes of the buffers that hold datagrams
// while they wait: QUIC's packets fit the first, so a delayed gigabit of
// them holds megabytes, not a 64 KiB buffer per packet.
var linkBufferSizes = [...]int{2 << 10, 16 << 10, maxDatagram}

var linkBuffers [len(linkBufferSizes)]sync.Pool

// getLinkBuffer returns a pooled buffer of length n.
func getLinkBuffer(n int) *[]byte {
	for i, size := range linkBufferSizes {
		if n <= size {
			if b, ok := linkBuffers[i].Get().(*[]byte); ok {
				*b = (*b)[:n]
				return b
			}
			b := make([]byte, n, size)
			return &b
		}
	}
	// arrive never sees more than maxDatagram bytes.
	b := make([]byte, n)
	return &b
}

// putLinkBuffer returns b to its pool.
func putLinkBuffer(b *[]byte) {
	for i, size := range linkBufferSizes {
		if cap(*b) == size {
			linkBuffers[i].Put(b)
			return
		}
	}
}
