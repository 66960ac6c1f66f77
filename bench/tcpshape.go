package bench

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"
)

// TCPShape is the link a TCP relay imitates for the tools that run over
// TCP (rsync): a rate and a one-way delay, the same in both directions and
// without loss. Zero values leave that property of loopback as it is.
type TCPShape struct {
	// Rate is in bits per second.
	Rate int64
	// Delay is one way; a round trip takes twice as long.
	Delay time.Duration
}

// tcpSegment is bytes read from one end of a relay and when.
type tcpSegment struct {
	b  []byte
	at time.Time
}

// shapedRelay copies src to dst as relay does, counting into n, and holds
// every read back for shape.Delay and to shape.Rate. What it holds is
// bounded (shapeBuffer), so that the sender feels the rate as TCP
// back-pressure rather than filling the relay's memory.
func shapedRelay(dst, src *net.TCPConn, n *atomic.Int64, shape TCPShape) {
	if shape == (TCPShape{}) {
		relay(dst, src, n)
		return
	}
	// Enough segments in flight for the delay at the rate, and a few
	// more so that pacing, not the queue, sets the speed.
	const segment = 16 << 10
	inflight := 4
	if shape.Rate > 0 {
		inflight += int(shape.Delay.Seconds() * float64(shape.Rate) / 8 / segment)
	}
	queue := make(chan tcpSegment, min(inflight, 4096))
	done := make(chan struct{})
	var readErr error
	go func() {
		// The reader: its end (EOF or error) is passed on after the bytes
		// read before it, by closing the queue.
		defer close(queue)
		for {
			b := make([]byte, segment)
			k, err := src.Read(b)
			if k > 0 {
				n.Add(int64(k))
				select {
				case queue <- tcpSegment{b[:k], time.Now()}:
				case <-done:
					return
				}
			}
			if err != nil {
				readErr = err
				return
			}
		}
	}()
	var free time.Time // when the link has sent all it was given
	for s := range queue {
		at := s.at.Add(shape.Delay)
		if shape.Rate > 0 {
			// The segment leaves once the ones before it have, then takes
			// its own serialisation time; deadlines are absolute, so
			// sleeping late does not slow the link down.
			if free.Before(s.at) {
				free = s.at
			}
			free = free.Add(time.Duration(float64(len(s.b)) * 8 / float64(shape.Rate) * float64(time.Second)))
			at = free.Add(shape.Delay)
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(s.b); err != nil {
			close(done)
			src.Close()
			dst.Close()
			for range queue {
			}
			return
		}
	}
	if errors.Is(readErr, io.EOF) {
		dst.CloseWrite()
		return
	}
	src.Close()
	dst.Close()
}
