package bench

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The link's sockets on Linux read with two control messages: the time the
// kernel received the datagram (SO_TIMESTAMPNS), and, for a burst a sender
// wrote as one segmented datagram, the size of its segments (UDP_GRO),
// which then arrive in one read. The link writes the datagrams it sends
// back to back to one receiver as one segmented datagram (UDP_SEGMENT),
// which the kernel splits again. The link shares the machine with both
// ends of what it carries: with a read and a write for every datagram it
// used 5.5–6.4 CPU seconds on a 13-second push at 400 Mbit/s, near half of
// one of this machine's two cores.

const (
	timespecSize = int(unsafe.Sizeof(unix.Timespec{}))
	// maxSegments is the most segments the link writes at once: the
	// kernel's UDP_MAX_SEGMENTS, 64 in older kernels (newer ones take
	// 128).
	maxSegments = 64
)

// linkControlSpace is the room a read needs for its control messages.
var linkControlSpace = unix.CmsgSpace(timespecSize) + unix.CmsgSpace(4)

// noSegmenting is set once the kernel refused a segmented write: from
// then on the link writes each datagram on its own.
var noSegmenting atomic.Bool

// tuneLinkSocket asks the kernel to stamp every datagram c receives with
// the time it arrived, and to hand over a burst written as one segmented
// datagram in one read. Without stamps a datagram would count as arriving
// when it is read, later whenever the reader was not running.
func tuneLinkSocket(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = errors.Join(
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1),
			unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1))
	}); err != nil {
		return err
	}
	return serr
}

// readControl reads the control messages oob of one read: how long ago the
// kernel received its datagrams, and the size of their segments, 0 for a
// read of one datagram. The stamp is wall-clock time, so the lag is
// clamped to [0, maxArrivalLag]: a clock stepped while the datagram waited
// cannot move it by more.
func readControl(oob []byte) (lag time.Duration, segment int) {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			break
		}
		switch {
		case h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && len(data) >= timespecSize:
			ts := (*unix.Timespec)(unsafe.Pointer(&data[0]))
			lag = min(max(time.Since(time.Unix(ts.Unix())), 0), maxArrivalLag)
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 4:
			segment = int(*(*int32)(unsafe.Pointer(&data[0])))
		}
		oob = rest
	}
	return lag, segment
}

// writeSegments sends b, datagrams of segment bytes each but the last, to
// to, or on c's connection when to is not valid: in one write where the
// kernel segments it, else one write per datagram.
func writeSegments(c *net.UDPConn, b []byte, segment int, to netip.AddrPort) error {
	if len(b) > segment && !noSegmenting.Load() {
		oob := make([]byte, unix.CmsgSpace(2))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
		*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = uint16(segment)
		_, _, err := c.WriteMsgUDPAddrPort(b, oob, to)
		if !errors.Is(err, unix.EIO) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		// A kernel or device without segmentation: never again.
		noSegmenting.Store(true)
	}
	return writeEach(c, b, segment, to)
}
