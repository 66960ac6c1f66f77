package bench

import (
	"net"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// stampSpace is the room a read needs for the kernel's arrival stamp.
var stampSpace = unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{})))

// stampArrivals asks the kernel to stamp every datagram c receives with
// the time it arrived (SO_TIMESTAMPNS). Without stamps a datagram counts
// as arriving when it is read, which is later whenever the reader was not
// running.
func stampArrivals(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return err
	}
	return serr
}

// arrivalLag is how long ago the kernel received the datagram whose
// control messages are oob, 0 when they carry no stamp. The stamp is
// wall-clock time, so the lag is clamped to [0, maxArrivalLag]: a clock
// stepped while the datagram waited cannot move it by more.
func arrivalLag(oob []byte) time.Duration {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_TIMESTAMPNS ||
			len(m.Data) < int(unsafe.Sizeof(unix.Timespec{})) {
			continue
		}
		ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
		return min(max(time.Since(time.Unix(ts.Unix())), 0), maxArrivalLag)
	}
	return 0
}
