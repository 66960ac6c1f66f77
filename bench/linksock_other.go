//go:build !linux

package bench

import (
	"net"
	"net/netip"
	"time"
)

const (
	// maxSegments is 1 here: the link writes each datagram on its own.
	maxSegments = 1
	// linkControlSpace is the room a read needs for its control
	// messages: none here.
	linkControlSpace = 0
)

// tuneLinkSocket does nothing on this system: datagrams count as arriving
// when they are read, one per read.
func tuneLinkSocket(*net.UDPConn) error { return nil }

// readControl reads nothing on this system, which stamps no arrivals and
// hands over one datagram per read.
func readControl([]byte) (lag time.Duration, segment int) { return 0, 0 }

// writeSegments sends b, datagrams of segment bytes each but the last, one
// write apiece.
func writeSegments(c *net.UDPConn, b []byte, segment int, to netip.AddrPort) error {
	return writeEach(c, b, segment, to)
}
