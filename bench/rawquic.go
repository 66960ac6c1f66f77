package bench

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

const rawALPN = "chunksync-bench-raw"

// rawQUICConfig is the QUIC configuration of both ends of the baseline: the
// flow-control windows chunksync itself uses, so that the comparison
// measures chunksync's work and not different window sizes.
func rawQUICConfig() *quic.Config {
	return &quic.Config{
		InitialStreamReceiveWindow:     2 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 8 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
	}
}

// RawQUICSink is the receiving end of the baseline: one QUIC listener that
// reads every stream to its end and discards the bytes.
type RawQUICSink struct {
	ln *quic.Listener
	tr *quic.Transport // nil when the listener made its own socket
}

// ListenRawQUIC starts a sink on addr with cert as its identity.
func ListenRawQUIC(addr string, cert tls.Certificate) (*RawQUICSink, error) {
	ln, err := quic.ListenAddr(addr, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{rawALPN}}, rawQUICConfig())
	if err != nil {
		return nil, fmt.Errorf("raw quic sink on %s: %w", addr, err)
	}
	return &RawQUICSink{ln: ln}, nil
}

// NewRawQUICSink starts a sink on conn, which it does not close: a
// FECConn, say, to measure what the wrapper costs.
func NewRawQUICSink(conn net.PacketConn, cert tls.Certificate) (*RawQUICSink, error) {
	tr := &quic.Transport{Conn: conn}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{rawALPN}}, rawQUICConfig())
	if err != nil {
		tr.Close()
		return nil, fmt.Errorf("raw quic sink on %s: %w", conn.LocalAddr(), err)
	}
	return &RawQUICSink{ln: ln, tr: tr}, nil
}

// Addr is the sink's address.
func (s *RawQUICSink) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until ctx ends; it answers each stream with
// the number of bytes it read, as 8 big-endian bytes, once the sender
// closes it.
func (s *RawQUICSink) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer s.ln.Close()
	if s.tr != nil {
		defer s.tr.Close()
	}
	for {
		conn, err := s.ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() {
			defer conn.CloseWithError(0, "")
			for {
				st, err := conn.AcceptStream(ctx)
				if err != nil {
					return
				}
				n, _ := io.Copy(io.Discard, st)
				st.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
				st.Close()
			}
		})
	}
}

// SendRawQUIC sends size bytes of buf, repeated, on one stream to a sink and
// returns how long it took until the sink confirmed receipt of every byte.
func SendRawQUIC(ctx context.Context, addr string, size int64, buf []byte) (time.Duration, error) {
	conn, err := quic.DialAddr(ctx, addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{rawALPN}}, rawQUICConfig())
	if err != nil {
		return 0, fmt.Errorf("raw quic to %s: %w", addr, err)
	}
	defer conn.CloseWithError(0, "")
	return SendRawQUICOn(ctx, conn, size, buf)
}

// SendRawQUICOn is SendRawQUIC on a connection the caller dialled.
func SendRawQUICOn(ctx context.Context, conn *quic.Conn, size int64, buf []byte) (time.Duration, error) {
	start := time.Now()
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	for left := size; left > 0; {
		n := min(left, int64(len(buf)))
		if _, err := st.Write(buf[:n]); err != nil {
			return 0, err
		}
		left -= n
	}
	st.Close()
	var b [8]byte
	if _, err := io.ReadFull(st, b[:]); err != nil {
		return 0, fmt.Errorf("raw quic confirmation: %w", err)
	}
	if got := binary.BigEndian.Uint64(b[:]); got != uint64(size) {
		return 0, errors.New("raw quic sink received a different byte count")
	}
	return time.Since(start), nil
}
