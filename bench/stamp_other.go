//go:build !linux

package bench

import (
	"net"
	"time"
)

// stampSpace is the room a read needs for an arrival stamp: none here.
const stampSpace = 0

// stampArrivals does nothing on this system: datagrams count as arriving
// when they are read.
func stampArrivals(*net.UDPConn) error { return nil }

// arrivalLag is 0 on this system, which stamps no arrivals.
func arrivalLag([]byte) time.Duration { return 0 }
