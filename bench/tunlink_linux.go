//go:build linux

package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The IP-level link: where Link relays UDP datagrams between sockets, and so
// can only carry QUIC, TUNLink carries every IP packet between two network
// namespaces, so that TCP tools (rsync, a plain TCP stream) cross the same
// loss, bursts, queue and delay as chunksync does. Each namespace has a TUN
// device; the process reads the packets one namespace's stack sends to the
// other and writes them, through a direction of the same emulator as Link's,
// into the other's TUN device.
//
// The namespaces have no name. They are created by unshare(2) on a locked
// thread and held by a file descriptor, so that they, and the TUN devices in
// them, disappear with the last descriptor, sockets and processes inside
// them included: a benchmark killed halfway leaves nothing behind, and
// parallel runs cannot collide on a name. The interfaces are configured
// with ioctl(2) and one netlink message, so that the link needs neither
// iproute2 nor util-linux.

const (
	// tunName is the TUN device's name; each namespace has its own, so it
	// cannot clash with another link's.
	tunName = "tun0"
	// tunMTU is Ethernet's, the path MTU the tools meet on real links.
	tunMTU = 1500
	// tunTxQueue is the TUN device's transmit queue, in packets. The
	// kernel drops what the sending stack hands the device while the
	// queue is full, out of sight of the emulator's statistics; a queue
	// of 600 ms at 200 Mbit/s absorbs the moments the forwarder is not
	// scheduled, so that only the emulated bottleneck drops.
	tunTxQueue = 10000
	// tunPrefixLen is the length of the link's prefix: two addresses.
	tunPrefixLen = 30
)

// tunBlock holds the links' prefixes: a /30 each, handed out in turn by
// tunNextPrefix. The addresses exist only inside the link's namespaces and
// cannot clash with anything outside them; different links get different
// ones all the same, and prefixes the host's own interfaces use are
// skipped, so that an address in a log or an error names one thing.
var (
	tunBlock      = netip.MustParsePrefix("10.219.0.0/16")
	tunNextPrefix atomic.Uint32
)

// Side names one end of a TUNLink.
type Side int

const (
	// SideA is the client's end: what it sends crosses LinkConfig.Up.
	SideA Side = iota
	// SideB is the server's end: what it sends crosses LinkConfig.Down.
	SideB
)

// String gives "A" or "B".
func (s Side) String() string {
	switch s {
	case SideA:
		return "A"
	case SideB:
		return "B"
	}
	return fmt.Sprintf("Side(%d)", int(s))
}

// TUNLinkOption changes a setting of NewTUNLink.
type TUNLinkOption func(*tunLinkOptions)

type tunLinkOptions struct {
	congestion string
}

// WithCongestionControl makes the TCP connections across the link use the
// congestion control algorithm name, such as "cubic" or "bbr" (one of
// net.ipv4.tcp_available_congestion_control), both ways. It is an
// attribute of the route to the other side in each namespace, as `ip
// route ... congctl` sets: it reaches programs that cannot choose, such as
// rsync. The route decides when a connection is made, over what a socket
// set before; a socket that sets TCP_CONGESTION once connected gets its
// own. Without it connections use the host's default algorithm
// (net.ipv4.tcp_congestion_control), which new namespaces inherit; a
// namespace cannot make an algorithm its default unless the host allows it
// to every user (net.ipv4.tcp_allowed_congestion_control).
func WithCongestionControl(name string) TUNLinkOption {
	return func(o *tunLinkOptions) { o.congestion = name }
}

// TUNLink is an IP-level link between two network namespaces that it
// creates, A and B, each with a TUN device of MTU 1500 and an address of a
// private /30 (Addr): what A sends to B's address crosses cfg.Up, what B
// sends to A's crosses cfg.Down. Programs run inside a namespace through Do.
//
// Its statistics count IP packets, headers included; a TCP tool's
// retransmissions count as the new packets they are. The namespaces' TCP
// keeps no metrics of closed connections (net.ipv4.tcp_no_metrics_save),
// so that every connection starts as the first one does.
type TUNLink struct {
	prefix netip.Prefix
	// ns holds the namespaces, tun their TUN devices, by Side.
	ns, tun  [2]*os.File
	start    time.Time
	up, down *linkDirection

	serving   atomic.Bool
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// NewTUNLink creates the two namespaces and their TUN devices, and checks
// cfg; Serve forwards. It needs the privileges to create network
// namespaces and TUN devices (CAP_SYS_ADMIN and CAP_NET_ADMIN: root) and
// the kernel's TUN driver (/dev/net/tun). Close removes everything.
func NewTUNLink(ctx context.Context, cfg LinkConfig, opts ...TUNLinkOption) (*TUNLink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tun link: %w", err)
	}
	var o tunLinkOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("tun link: %w", err)
	}
	prefix, err := pickTUNPrefix()
	if err != nil {
		return nil, fmt.Errorf("tun link: %w", err)
	}
	l := &TUNLink{
		prefix: prefix,
		up:     newLinkDirection(cfg.Up, cfg.Seed, 1, true),
		down:   newLinkDirection(cfg.Down, cfg.Seed, 2, false),
	}
	for _, side := range []Side{SideA, SideB} {
		ns, tun, err := newTUNNamespace(l.Addr(side), l.Addr(1-side), o)
		if err != nil {
			l.Close()
			switch {
			case errors.Is(err, fs.ErrPermission):
				err = fmt.Errorf("%w (network namespaces and TUN devices take root: CAP_SYS_ADMIN and CAP_NET_ADMIN)", err)
			case errors.Is(err, fs.ErrNotExist):
				err = fmt.Errorf("%w (the kernel's TUN driver: modprobe tun)", err)
			}
			return nil, fmt.Errorf("tun link: namespace %s: %w", side, err)
		}
		l.ns[side], l.tun[side] = ns, tun
	}
	l.start = time.Now()
	return l, nil
}

// pickTUNPrefix takes the next /30 of tunBlock that no interface of the
// host's namespace overlaps.
func pickTUNPrefix() (netip.Prefix, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("the host's addresses: %w", err)
	}
	var host []netip.Prefix
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			host = append(host, p.Masked())
		}
	}
	n := uint32(1) << (tunPrefixLen - tunBlock.Bits())
	base := binary.BigEndian.Uint32(tunBlock.Addr().AsSlice())
	for range n {
		i := tunNextPrefix.Add(1) % n
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], base+i<<(32-tunPrefixLen))
		p := netip.PrefixFrom(netip.AddrFrom4(b), tunPrefixLen)
		clash := false
		for _, h := range host {
			clash = clash || h.Overlaps(p)
		}
		if !clash {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("every /%d of %s overlaps an address of the host", tunPrefixLen, tunBlock)
}

// newTUNNamespace creates a network namespace with loopback up and a TUN
// device with addr, on the link's prefix, and a route to peer through it.
// It returns the namespace and the device.
func newTUNNamespace(addr, peer netip.Addr, o tunLinkOptions) (ns, tun *os.File, err error) {
	ns, err = onNamespaceThread(nil, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		if err := configureTUN(fd, addr, peer, o); err != nil {
			unix.Close(fd)
			return err
		}
		// O_NONBLOCK lets os.NewFile put the device on the runtime's
		// poller, so that Close interrupts a Read. Only now: a TUN file
		// not yet attached to a device polls as an error, which the
		// poller would remember.
		tun = os.NewFile(uintptr(fd), "/dev/net/tun")
		return nil
	})
	if err != nil {
		for _, f := range []*os.File{tun, ns} {
			if f != nil {
				f.Close()
			}
		}
		return nil, nil, err
	}
	return ns, tun, nil
}

// configureTUN makes the TUN device fd, in the calling thread's namespace,
// a layer-3 device without packet information, and configures it.
func configureTUN(fd int, addr, peer netip.Addr, o tunLinkOptions) error {
	ifr, err := unix.NewIfreq(tunName)
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("create %s: %w", tunName, err)
	}
	// The interface ioctls take any socket of the namespace.
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(s)
	up := func(name string) error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
			return fmt.Errorf("%s flags: %w", name, err)
		}
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
			return fmt.Errorf("%s up: %w", name, err)
		}
		return nil
	}
	// Programs in the namespace may talk to themselves, as on any host.
	if err := up("lo"); err != nil {
		return err
	}
	// IPv6 would send router solicitations and multicast reports across
	// the link, which its statistics would count among the tools' packets.
	// A kernel without IPv6 has no such file, and nothing to turn off.
	err = os.WriteFile("/proc/sys/net/ipv6/conf/"+tunName+"/disable_ipv6", []byte("1"), 0)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: disable IPv6: %w", tunName, err)
	}
	// Linux remembers a destination's RTT, ssthresh and reordering when a
	// connection to it closes, and starts the next one from them: each
	// transfer across the link would start from what the one before it
	// met. Measurements must not depend on their order.
	if err := os.WriteFile("/proc/sys/net/ipv4/tcp_no_metrics_save", []byte("1"), 0); err != nil {
		return fmt.Errorf("turn off TCP metrics: %w", err)
	}
	mask := net.CIDRMask(tunPrefixLen, 32)
	for _, step := range []struct {
		what string
		req  uint
		fill func(*unix.Ifreq) error
	}{
		{"MTU", unix.SIOCSIFMTU, func(r *unix.Ifreq) error { r.SetUint32(tunMTU); return nil }},
		{"transmit queue", unix.SIOCSIFTXQLEN, func(r *unix.Ifreq) error { r.SetUint32(tunTxQueue); return nil }},
		{"address", unix.SIOCSIFADDR, func(r *unix.Ifreq) error { return r.SetInet4Addr(addr.AsSlice()) }},
		{"netmask", unix.SIOCSIFNETMASK, func(r *unix.Ifreq) error { return r.SetInet4Addr(mask) }},
	} {
		ifr, err := unix.NewIfreq(tunName)
		if err == nil {
			err = step.fill(ifr)
		}
		if err == nil {
			err = unix.IoctlIfreq(s, step.req, ifr)
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", tunName, step.what, err)
		}
	}
	// Up, the device gets the route to the prefix.
	if err := up(tunName); err != nil {
		return err
	}
	if o.congestion == "" {
		return nil
	}
	ifr, err = unix.NewIfreq(tunName)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFINDEX, ifr); err != nil {
		return fmt.Errorf("%s index: %w", tunName, err)
	}
	if err := addCongestionRoute(int(ifr.Uint32()), peer, o.congestion); err != nil {
		return fmt.Errorf("route to %s with congestion control %q: %w", peer, o.congestion, err)
	}
	return nil
}

// addCongestionRoute adds, in the calling thread's namespace, a route to
// peer alone through the device ifindex with the congestion control
// algorithm cc, what `ip route add PEER/32 dev DEV congctl CC` does. It is
// more specific than the device's prefix route, so connections to peer
// take it.
func addCongestionRoute(ifindex int, peer netip.Addr, cc string) error {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(s)
	ne := binary.NativeEndian
	attr := func(b []byte, typ uint16, data []byte) []byte {
		n := unix.SizeofRtAttr + len(data)
		b = ne.AppendUint16(b, uint16(n))
		b = ne.AppendUint16(b, typ)
		b = append(b, data...)
		for ; n%4 != 0; n++ {
			b = append(b, 0)
		}
		return b
	}
	msg := make([]byte, unix.SizeofNlMsghdr, 128)
	msg = append(msg, unix.AF_INET, 32, 0, 0, // family, destination and source lengths, TOS
		unix.RT_TABLE_MAIN, unix.RTPROT_STATIC, unix.RT_SCOPE_LINK, unix.RTN_UNICAST,
		0, 0, 0, 0) // flags
	msg = attr(msg, unix.RTA_DST, peer.AsSlice())
	msg = attr(msg, unix.RTA_OIF, ne.AppendUint32(nil, uint32(ifindex)))
	msg = attr(msg, unix.RTA_METRICS, attr(nil, unix.RTAX_CC_ALGO, append([]byte(cc), 0)))
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.RTM_NEWROUTE)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	ne.PutUint32(msg[8:], 1) // sequence number
	if err := unix.Sendto(s, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(s, buf, 0)
	if err != nil {
		return fmt.Errorf("netlink receive: %w", err)
	}
	// The answer to a request with NLM_F_ACK is an error message: a
	// header, then the error number (0 for success) and the request's
	// header.
	if n < unix.SizeofNlMsghdr+4 || ne.Uint16(buf[4:]) != unix.NLMSG_ERROR {
		return fmt.Errorf("netlink: unexpected answer of %d bytes", n)
	}
	if errno := int32(ne.Uint32(buf[unix.SizeofNlMsghdr:])); errno != 0 {
		return unix.Errno(-errno)
	}
	return nil
}

// onNamespaceThread runs fn on a locked OS thread inside the network
// namespace ns, or inside a new one when ns is nil, and returns the thread
// to the namespace it was in. It returns the new namespace when it made
// one, also when fn failed. The thread never leaves its namespace for good:
// if it cannot return, its goroutine ends still locked, and the runtime
// ends the thread rather than let other goroutines run there.
func onNamespaceThread(ns *os.File, fn func() error) (*os.File, error) {
	type result struct {
		made *os.File
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() { done <- r }()
		runtime.LockOSThread()
		back, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			r.err = fmt.Errorf("the thread's namespace: %w", err)
			return
		}
		defer back.Close()
		if ns == nil {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				// Still where it was: the thread may serve others.
				runtime.UnlockOSThread()
				r.err = fmt.Errorf("create a network namespace: %w", err)
				return
			}
			r.made, r.err = os.Open("/proc/thread-self/ns/net")
		} else if err := setns(ns); err != nil {
			runtime.UnlockOSThread()
			r.err = fmt.Errorf("enter a network namespace: %w", err)
			return
		}
		if r.err == nil {
			r.err = fn()
		}
		if err := setns(back); err != nil {
			r.err = errors.Join(r.err, fmt.Errorf("leave the network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
	}()
	r := <-done
	return r.made, r.err
}

// setns moves the calling thread into the network namespace ns. The
// descriptor is used under the file's own lock (Control), so that a Close
// at the same time cannot hand its number to another file first.
func setns(ns *os.File) error {
	rc, err := ns.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Setns(int(fd), unix.CLONE_NEWNET) }); err != nil {
		return err
	}
	return serr
}

// Do runs fn on an OS thread inside side's namespace and returns its error.
// What fn creates there stays there after Do returns: the sockets it opens
// (net.ListenConfig.Listen, net.Dialer.DialContext, which create their
// socket on the calling thread) and the processes it starts:
//
//	cmd := exec.CommandContext(ctx, "rsync", args...)
//	err := link.Do(bench.SideA, cmd.Start)
//
// Goroutines that fn starts run on other threads, outside the namespace.
// Do may be called from several goroutines at once, also while Serve runs;
// after Close it fails.
func (l *TUNLink) Do(side Side, fn func() error) error {
	if side != SideA && side != SideB {
		return fmt.Errorf("tun link: no side %s", side)
	}
	if l.closed.Load() {
		return ErrTUNLinkClosed
	}
	_, err := onNamespaceThread(l.ns[side], fn)
	return err
}

// ErrTUNLinkClosed is what Do returns once the link is closed.
var ErrTUNLinkClosed = errors.New("tun link: closed")

// Addr is the address of side's TUN device: the first of the link's /30
// for A, the second for B.
func (l *TUNLink) Addr(side Side) netip.Addr {
	a := l.prefix.Addr().Next()
	if side == SideB {
		a = a.Next()
	}
	return a
}

// Stats returns the counts of each direction so far, Up from A to B. It
// may be called at any time, from any goroutine, also while Serve runs.
func (l *TUNLink) Stats() (up, down LinkStats) {
	return l.up.counters.load(), l.down.counters.load()
}

// Close removes the TUN devices, which ends Serve if it runs, and lets go
// of the namespaces: the kernel removes each when the last socket and
// process in it are gone too. Serve still owns its goroutines: wait for
// it to return to know they are gone. Close may be called more than once.
func (l *TUNLink) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		var errs []error
		for _, f := range []*os.File{l.tun[SideA], l.tun[SideB], l.ns[SideA], l.ns[SideB]} {
			if f != nil {
				errs = append(errs, f.Close())
			}
		}
		if err := errors.Join(errs...); err != nil {
			l.closeErr = fmt.Errorf("tun link close: %w", err)
		}
	})
	return l.closeErr
}

// now is the link's clock: monotonic nanoseconds since it was created.
func (l *TUNLink) now() int64 { return int64(time.Since(l.start)) }

// deliver writes the IP packet b into the TUN device of the side it goes
// to, whose stack receives it as if from the wire. It is given one packet
// at a time (maxSegments), so b is one and segment its length.
func (l *TUNLink) deliver(up bool, _ *linkFlow, b []byte, _ int) error {
	to := l.tun[SideA]
	if up {
		to = l.tun[SideB]
	}
	_, err := to.Write(b)
	return err
}

// maxSegments is 1: a TUN device takes one packet per write.
func (l *TUNLink) maxSegments() int { return 1 }

// Serve forwards packets until ctx is done or Close is called, then closes
// the link and returns once every goroutine it started has ended. Packets
// still waiting for their delivery time are dropped. It returns nil after
// a cancel or a Close, and the error otherwise; it may run once.
func (l *TUNLink) Serve(ctx context.Context) error {
	if !l.serving.CompareAndSwap(false, true) {
		return errors.New("tun link: Serve called twice")
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
	errs := make(chan error, 2)
	wg.Go(func() { errs <- l.forward(SideA, l.up) })
	wg.Go(func() { errs <- l.forward(SideB, l.down) })
	// A reader that fails ends the link: half a link is no link.
	err := <-errs
	cancel()
	l.Close()
	err = errors.Join(err, <-errs)
	wg.Wait()
	l.up.discard()
	l.down.discard()
	return err
}

// forward reads the packets side's stack sends into its TUN device and
// hands them to direction d, until the device is closed.
func (l *TUNLink) forward(side Side, d *linkDirection) error {
	buf := make([]byte, maxDatagram)
	for {
		n, err := l.tun[side].Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("tun link: read from %s: %w", side, err)
		}
		d.arrive(l, l.now(), nil, buf[:n])
	}
}
