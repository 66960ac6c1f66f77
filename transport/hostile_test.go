package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// rawConn dials the server with the real TLS settings but speaks the wire
// protocol by hand, to send what a well-behaved client never would.
func rawConn(t *testing.T, ts *testServer) *quic.Conn {
	t.Helper()
	tlsConf, err := clientTLS(ts.Addr().String(), ts.Fingerprint(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, ts.Addr().String(), tlsConf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	return conn
}

func rawHello(t *testing.T, conn *quic.Conn, token string) {
	t.Helper()
	st, err := conn.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Write(appendFrame([]byte{streamHello}, 0, hello{Version: ProtocolVersion, Token: token}.encode()))
	st.Close()
	status, body, err := readFrame(st, 4096)
	if err != nil || status != statusOK {
		t.Fatalf("hello: status %d %q %v", status, body, err)
	}
}

// connClosed waits for the server to close conn and returns its error.
func connClosed(t *testing.T, conn *quic.Conn) error {
	t.Helper()
	select {
	case <-conn.Context().Done():
		return context.Cause(conn.Context())
	case <-time.After(15 * time.Second):
		t.Fatal("server kept a hostile connection open")
		return nil
	}
}

func TestHostileHandshakes(t *testing.T) {
	ts := startServer(t, ServerConfig{HandshakeTimeout: time.Second})
	cases := map[string][]byte{
		"control before hello": appendFrame([]byte{streamControl}, opSessions, nil),
		"oversized hello":      {streamHello, 0, 0xff, 0xff, 0xff, 0xff},
		"bad magic":            appendFrame([]byte{streamHello}, 0, []byte("HTTP/1.1 GET /")),
		"unknown version":      appendFrame([]byte{streamHello}, 0, hello{Version: 99, Token: ts.token}.encode()),
		"silent":               nil,
	}
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			conn := rawConn(t, ts)
			if msg != nil {
				st, err := conn.OpenStreamSync(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				st.Write(msg)
			}
			err := connClosed(t, conn)
			var appErr *quic.ApplicationError
			if !errors.As(err, &appErr) || appErr.ErrorCode != codeProtocol {
				t.Fatalf("closed with %v, want application error %d", err, codeProtocol)
			}
		})
	}
	// The server still serves well-behaved clients.
	ts.client(t)
}

func TestHostileChunks(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	up, err := c.OpenUpload(context.Background(), engine.UploadSpec{Path: "h.bin", Size: 1, Chunker: rabin(t)})
	if err != nil {
		t.Fatal(err)
	}
	sid := up.ID()
	up.Close()

	good := []byte("hello, chunk")
	goodID := engine.SumChunk(good)
	header := func(id engine.ChunkID, codec engine.Codec, raw, payload uint32) []byte {
		b := make([]byte, chunkHeaderLen)
		chunkHeader{ID: id, Codec: codec, RawSize: raw, PayloadLen: payload}.put(b)
		return b
	}
	bomb := func() []byte {
		_, p := engine.Compress(nil, make([]byte, 8<<20))
		return p
	}()
	cases := []struct {
		name   string
		send   []byte
		status byte
	}{
		{"mismatch", append(header(engine.SumChunk([]byte("other")), engine.CodecRaw, uint32(len(good)), uint32(len(good))), good...), statusMismatch},
		{"oversized chunk", header(goodID, engine.CodecRaw, engine.MaxChunkSize+1, engine.MaxChunkSize+1), statusBadRequest},
		{"zero size", header(goodID, engine.CodecRaw, 0, 0), statusBadRequest},
		{"raw payload length lies", header(goodID, engine.CodecRaw, 12, 1<<30), statusBadRequest},
		{"unknown codec", header(goodID, 7, 12, 12), statusBadRequest},
		{"zstd payload above the bound", header(goodID, engine.CodecZstd, 1<<20, uint32(engine.MaxEncodedSize(engine.CodecZstd, 1<<20))+1), statusBadRequest},
		{"zstd bomb", append(header(engine.SumChunk(make([]byte, 8<<20)), engine.CodecZstd, 1<<20, uint32(len(bomb))), bomb...), statusBadRequest},
		{"garbage zstd", append(header(goodID, engine.CodecZstd, 12, 12), good...), statusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn := rawConn(t, ts)
			rawHello(t, conn, ts.token)
			st, err := conn.OpenStreamSync(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			st.Write(appendFrame([]byte{streamData}, 0, []byte(sid)))
			st.Write(tc.send)
			status, _, err := readFrame(st, 64)
			if err != nil || status != statusOK {
				t.Fatalf("session frame: %d %v", status, err)
			}
			_, err = readAck(st)
			var se *ServerError
			if !errors.As(err, &se) || se.Status != tc.status {
				t.Fatalf("ack: %v, want status %d", err, tc.status)
			}
		})
	}
	// None of it reached the store.
	has, err := ts.db.HasChunks(context.Background(), []engine.ChunkID{goodID, engine.SumChunk(make([]byte, 8<<20))})
	if err != nil || has[0] || has[1] {
		t.Fatalf("refused chunks indexed: %v %v", has, err)
	}
	if _, err := ts.store.Get(context.Background(), goodID, nil); !errors.Is(err, index.ErrChunkMissing) {
		t.Fatalf("refused chunk stored: %v", err)
	}
}

func TestDisconnectMidChunk(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	up, err := c.OpenUpload(context.Background(), engine.UploadSpec{Path: "d.bin", Size: 1, Chunker: rabin(t)})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	id := engine.SumChunk(data)
	conn := rawConn(t, ts)
	rawHello(t, conn, ts.token)
	st, _ := conn.OpenStreamSync(context.Background())
	st.Write(appendFrame([]byte{streamData}, 0, []byte(up.ID())))
	hdr := make([]byte, chunkHeaderLen)
	chunkHeader{ID: id, Codec: engine.CodecRaw, RawSize: uint32(len(data)), PayloadLen: uint32(len(data))}.put(hdr)
	st.Write(hdr)
	st.Write(data[:len(data)/2])
	readFrame(st, 64) // session accepted: the server is reading the chunk
	conn.CloseWithError(0, "gone")

	// The server drops the half chunk and stays healthy.
	missing, err := up.Missing(context.Background(), 0, []engine.ChunkRef{{ID: id, Size: uint32(len(data))}})
	if err != nil || !missing[0] {
		t.Fatalf("half-sent chunk: missing=%v err=%v", missing, err)
	}
	entries, _ := os.ReadDir(filepath.Join(ts.cfg.DataDir, "chunks"))
	for _, e := range entries {
		if e.Type().IsRegular() {
			t.Fatalf("stray file in the chunk store: %s", e.Name())
		}
	}
}

func TestOversizedMissingRequest(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	conn := rawConn(t, ts)
	rawHello(t, conn, ts.token)
	e := enc{}
	e.string("session")
	e.uvarint(0)
	e.uvarint(1 << 40) // a count that would allocate terabytes
	reply, err := roundTrip(context.Background(), conn, opMissing, e.b)
	var se *ServerError
	if !errors.As(err, &se) || se.Status != statusBadRequest {
		t.Fatalf("huge count: reply %q, err %v", reply, err)
	}
	// A control frame over the limit is refused before it is read.
	st, _ := conn.OpenStreamSync(context.Background())
	hdr := []byte{streamControl, opCommit, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[2:], maxControlLen+1)
	st.Write(hdr)
	st.Close()
	status, _, err := readFrame(st, 4096)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if status != statusBadRequest {
		t.Fatalf("oversized control frame: status %d", status)
	}
}

// A QUIC peer that completes the handshake but never answers the hello is
// reported as unreachable, with what happened, within the dial timeout.
func TestSilentServer(t *testing.T) {
	cert, err := LoadIdentity(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{ALPN}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		if conn, err := ln.Accept(ctx); err == nil {
			<-ctx.Done() // hold the connection, say nothing
			conn.CloseWithError(0, "")
		}
	}()
	defer func() { cancel(); <-accepted }()
	_, err = Dial(context.Background(), ClientConfig{Addr: ln.Addr().String(), Token: "t", Fingerprint: Fingerprint(cert.Certificate[0]), DialTimeout: 500 * time.Millisecond})
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "did not answer its hello") {
		t.Fatalf("silent server: %v", err)
	}
}

// TestHostileDeltas: requests for signatures and deltas that name what the
// server does not hold, or lie about sizes, and delta entries whose bytes
// do not give their chunks, are refused, and nothing is stored.
func TestHostileDeltas(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	p := engine.ChunkerParams{Name: "fixed", Min: 4 << 10, Avg: 4 << 10, Max: 4 << 10}
	v1 := writeFile(t, 64<<10, 11) // 16 chunks
	pushWith(t, c, v1, "d.bin", p)
	_, m, err := c.Manifest(t.Context(), "d.bin", 0)
	if err != nil {
		t.Fatal(err)
	}
	up, err := c.OpenUpload(t.Context(), engine.UploadSpec{Path: "d.bin", Size: 4 << 10, Chunker: p})
	if err != nil {
		t.Fatal(err)
	}
	sid := up.ID()
	up.Close()
	conn := rawConn(t, ts)
	rawHello(t, conn, ts.token)
	status := func(err error) byte {
		var se *ServerError
		if errors.As(err, &se) {
			return se.Status
		}
		t.Fatalf("not a refusal: %v", err)
		return 0
	}

	sig := func(version uint64, spans ...engine.ChunkSpan) []byte {
		e := enc{}
		e.string(sid)
		e.uvarint(version)
		encodeSpans(&e, spans)
		return e.b
	}
	if _, err := roundTrip(t.Context(), conn, opSignature, sig(1, engine.ChunkSpan{Start: 10, End: 20})); status(err) != statusBadRequest {
		t.Errorf("signature of a span past the base: %v", err)
	}
	if _, err := roundTrip(t.Context(), conn, opSignature, sig(9, engine.ChunkSpan{Start: 0, End: 1})); status(err) != statusNotFound {
		t.Errorf("signature of a version that does not exist: %v", err)
	}
	if reply, err := roundTrip(t.Context(), conn, opSignature, sig(1, engine.ChunkSpan{Start: 0, End: 16})); err != nil || len(reply) < 3 {
		t.Errorf("signature of the whole base: %d bytes, %v", len(reply), err)
	}

	fetch := func(targets, base []engine.ChunkRef) []byte {
		e := enc{}
		encodeRefs(&e, targets)
		encodeRefs(&e, base)
		return e.b
	}
	huge := make([]engine.ChunkRef, 3)
	for i := range huge {
		huge[i] = engine.ChunkRef{ID: m.Chunks[0].ID, Size: engine.MaxChunkSize}
	}
	if _, err := roundTrip(t.Context(), conn, opFetchDelta, fetch(m.Chunks[:1], huge)); status(err) != statusBadRequest {
		t.Errorf("fetch delta against a base of 48 MiB: %v", err)
	}
	lie := []engine.ChunkRef{{ID: m.Chunks[0].ID, Size: 5}}
	if _, err := roundTrip(t.Context(), conn, opFetchDelta, fetch(m.Chunks[:1], lie)); status(err) != statusBadRequest {
		t.Errorf("fetch delta with a base chunk's size misstated: %v", err)
	}
	unknown := []engine.ChunkRef{{ID: engine.SumChunk([]byte("never stored")), Size: 12}}
	reply, err := roundTrip(t.Context(), conn, opFetchDelta, fetch(m.Chunks[:1], unknown))
	if err != nil || len(reply) == 0 || reply[0] != 0 {
		t.Errorf("fetch delta against a chunk the server lacks: %q, %v", reply, err)
	}

	// Delta entries on a data stream.
	target := bytes.Repeat([]byte("new chunk "), 400)
	targetID := engine.SumChunk(target)
	entry := func(targets []engine.ChunkRef, delta []byte) []byte {
		e := enc{}
		e.uvarint(1)
		encodeSpans(&e, []engine.ChunkSpan{{Start: 0, End: 2}})
		encodeRefs(&e, targets)
		e.raw(delta)
		var size uint32
		for _, r := range targets {
			size += r.Size
		}
		h := make([]byte, chunkHeaderLen)
		chunkHeader{ID: targets[0].ID, Codec: codecDelta, RawSize: size, PayloadLen: uint32(len(e.b))}.put(h)
		return append(h, e.b...)
	}
	raw := append([]byte{0}, target...) // a delta of kind raw
	wrong := append([]byte{0}, bytes.Repeat([]byte("x"), len(target))...)
	cases := []struct {
		name   string
		send   []byte
		status byte
	}{
		{"bytes that are not the target", entry([]engine.ChunkRef{{ID: targetID, Size: uint32(len(target))}}, wrong), statusMismatch},
		{"garbage delta", entry([]engine.ChunkRef{{ID: targetID, Size: uint32(len(target))}}, []byte{9, 9, 9}), statusBadRequest},
		{"targets disagree with the header", func() []byte {
			b := entry([]engine.ChunkRef{{ID: targetID, Size: uint32(len(target))}}, raw)
			other := engine.SumChunk([]byte("other"))
			copy(b, other[:])
			return b
		}(), statusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dconn := rawConn(t, ts)
			rawHello(t, dconn, ts.token)
			st, err := dconn.OpenStreamSync(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			st.Write(appendFrame([]byte{streamData}, 0, []byte(sid)))
			st.Write(tc.send)
			if s, _, err := readFrame(st, 64); err != nil || s != statusOK {
				t.Fatalf("session frame: %d %v", s, err)
			}
			_, err = readAck(st)
			var se *ServerError
			if !errors.As(err, &se) || se.Status != tc.status {
				t.Fatalf("ack: %v, want status %d", err, tc.status)
			}
		})
	}
	if has, err := ts.db.HasChunks(t.Context(), []engine.ChunkID{targetID}); err != nil || has[0] {
		t.Fatalf("refused delta target indexed: %v %v", has, err)
	}
}
