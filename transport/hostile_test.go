package transport

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/zeebo/blake3"

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
		"data before hello":    appendFrame([]byte{streamData}, 0, []byte("0123456789abcdef0123456789abcdef")),
		"fetch before hello":   appendFrame([]byte{streamFetch}, 0, []byte{0}),
		"oversized hello":      {streamHello, 0, 0xff, 0xff, 0xff, 0xff},
		"hello cut short":      {streamHello, 0, 0, 0, 0, 200, 'C', 'S'},
		"token over 256 bytes": appendFrame([]byte{streamHello}, 0, hello{Version: ProtocolVersion, Token: strings.Repeat("t", maxTokenLen+1)}.encode()),
		"bad magic":            appendFrame([]byte{streamHello}, 0, []byte("HTTP/1.1 GET /")),
		"unknown version":      appendFrame([]byte{streamHello}, 0, hello{Version: 99, Token: ts.token}.encode()),
		"silent":               nil,
	}
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			hostileCases.Add(1)
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
	for name, token := range map[string]string{"wrong token": "cs_" + strings.Repeat("A", 43), "empty token": ""} {
		t.Run(name, func(t *testing.T) {
			hostileCases.Add(1)
			conn := rawConn(t, ts)
			st, err := conn.OpenStreamSync(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			st.Write(appendFrame([]byte{streamHello}, 0, hello{Version: ProtocolVersion, Token: token}.encode()))
			st.Close()
			if status, msg, err := readFrame(st, 4096); err == nil && (status != statusAuth || string(msg) != "token refused") {
				t.Errorf("%s: status %d %q", name, status, msg)
			}
			var appErr *quic.ApplicationError
			if err := connClosed(t, conn); !errors.As(err, &appErr) || appErr.ErrorCode != codeUnauthorized {
				t.Fatalf("closed with %v, want application error %d", err, codeUnauthorized)
			}
		})
	}
	// The server still serves well-behaved clients.
	ts.client(t)
}

func TestHostileChunks(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	c := ts.client(t)
	up, err := openSession(context.Background(), c, engine.UploadSpec{Path: "h.bin", Size: 1, Chunker: rabin(t)})
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
	up, err := openSession(context.Background(), c, engine.UploadSpec{Path: "d.bin", Size: 1, Chunker: rabin(t)})
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
// reported as unreachable, with what happened, within the dial timeout: by
// the first request, which Dial sent the hello without waiting for.
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
	c, err := Dial(context.Background(), ClientConfig{Addr: ln.Addr().String(), Token: "t", Fingerprint: Fingerprint(cert.Certificate[0]), DialTimeout: 500 * time.Millisecond, RetryFor: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Sessions(t.Context())
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
	up, err := openSession(t.Context(), c, engine.UploadSpec{Path: "d.bin", Size: 4 << 10, Chunker: p})
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
	// Refused once the request holds its memory: the server lets it go
	// and answers the next.
	if _, err := roundTrip(t.Context(), conn, opFetchDelta, fetch(unknown, m.Chunks[:1])); status(err) != statusError {
		t.Errorf("fetch delta of a chunk the server lacks: %v", err)
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

// hostileCases counts the hostile inputs the suite sends, for TestMain to
// report.
var hostileCases atomic.Int64

func TestMain(m *testing.M) {
	if dir := os.Getenv(loadServerEnv); dir != "" {
		if err := runLoadServer(dir); err != nil {
			fmt.Fprintln(os.Stderr, "load server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	if n := hostileCases.Load(); n > 0 {
		fmt.Printf("hostile cases tried: %d\n", n)
	}
	os.Exit(code)
}

// confinedServer starts a server whose data directory has a sibling
// directory holding one file, for the test to check at its end that
// nothing was written outside the data directory: the sibling is
// unchanged and the parent holds nothing else.
func confinedServer(t *testing.T, cfg ServerConfig) (ts *testServer, outside string) {
	t.Helper()
	parent := t.TempDir()
	cfg.DataDir = filepath.Join(parent, "data")
	outside = filepath.Join(parent, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	canary := filepath.Join(outside, "canary")
	if err := os.WriteFile(canary, []byte("canary"), 0o644); err != nil {
		t.Fatal(err)
	}
	ts = startServer(t, cfg)
	t.Cleanup(func() {
		names := func(dir string) []string {
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var n []string
			for _, e := range entries {
				n = append(n, e.Name())
			}
			return n
		}
		if got := names(parent); !slices.Equal(got, []string{"data", "outside"}) {
			t.Errorf("beside the data directory: %v", got)
		}
		if got := names(outside); !slices.Equal(got, []string{"canary"}) {
			t.Errorf("written outside the data directory: %v", got)
		}
		if b, err := os.ReadFile(canary); err != nil || string(b) != "canary" {
			t.Errorf("file outside the data directory changed: %q %v", b, err)
		}
	})
	return ts, outside
}

// refusal asserts that err is the server's refusal with status and a
// message containing want.
func refusal(t *testing.T, err error, status byte, want string) {
	t.Helper()
	hostileCases.Add(1)
	var se *ServerError
	if !errors.As(err, &se) || se.Status != status || !strings.Contains(se.Msg, want) {
		t.Errorf("got %v, want status %d with %q", err, status, want)
	}
}

// peakHeap samples the heap in use until stop is called and returns the
// largest it saw, to show that a hostile request did not make the server
// allocate what it asked for.
func peakHeap() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak.Load()
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestHostileControl sends control requests that a well-behaved client
// never would, each refused with its status and a message saying why.
func TestHostileControl(t *testing.T) {
	ts, _ := confinedServer(t, ServerConfig{})
	c := ts.client(t)
	p := engine.ChunkerParams{Name: "fixed", Min: 4 << 10, Avg: 4 << 10, Max: 4 << 10}
	pushWith(t, c, writeFile(t, 64<<10, 3), "v.bin", p) // 16 chunks
	up, err := openSession(t.Context(), c, engine.UploadSpec{Path: "v.bin", Size: 8 << 10, Chunker: p})
	if err != nil {
		t.Fatal(err)
	}
	sid := up.ID()
	up.Close()
	conn := rawConn(t, ts)
	rawHello(t, conn, ts.token)

	open := func(path string, size int64, p engine.ChunkerParams) []byte {
		e := enc{}
		encodeSpec(&e, engine.UploadSpec{Path: path, Size: size, Chunker: p})
		encodeBaseRef(&e, baseRef{})
		return e.b
	}
	str := func(s string) []byte {
		e := enc{}
		e.string(s)
		return e.b
	}
	// A chunk list delta against version 1 (16 chunks) that copies it
	// over and over: a million chunks in a few kilobytes.
	copies := func(n int) []byte {
		d := binary.AppendUvarint(nil, uint64(16*n))
		for i := range n {
			d = binary.AppendUvarint(d, 16<<1) // copy 16
			if i == 0 {
				d = binary.AppendVarint(d, 0)
			} else {
				d = binary.AppendVarint(d, -16)
			}
		}
		return d
	}
	missingDelta := func(first uint64, delta []byte) []byte {
		e := enc{}
		e.string(sid)
		e.uvarint(first)
		e.uvarint(1)
		e.bytes(delta)
		return e.b
	}
	commitDelta := func(delta []byte) []byte {
		e := enc{}
		e.string(sid)
		e.uvarint(1)
		encodeSpec(&e, engine.UploadSpec{Path: "v.bin", Size: 8 << 10, Chunker: p})
		e.raw(make([]byte, 48))
		e.bytes(delta)
		return e.b
	}
	fetchRefs := func(n uint64) []byte {
		e := enc{}
		e.uvarint(n)
		return e.b
	}
	_, v1, err := c.Manifest(t.Context(), "v.bin", 1)
	if err != nil {
		t.Fatal(err)
	}
	// An open that asks about chunks listed as a delta against version 1.
	openAskDelta := func(delta []byte) []byte {
		e := enc{}
		encodeSpec(&e, engine.UploadSpec{Path: "v.bin", Size: 8 << 10, Chunker: p})
		encodeBaseRef(&e, baseRef{Version: 1, BLAKE3: v1.Digests.BLAKE3})
		e.bytes(delta)
		return e.b
	}
	cases := []struct {
		name   string
		op     byte
		body   []byte
		status byte
		msg    string
	}{
		{"path with ..", opOpenUpload, open("a/../../x", 1, p), statusBadRequest, "stay inside the files root"},
		{"path that is ..", opOpenUpload, open("..", 1, p), statusBadRequest, "stay inside the files root"},
		{"absolute path", opOpenUpload, open("/etc/passwd", 1, p), statusBadRequest, "stay inside the files root"},
		{"unclean path", opOpenUpload, open("a//b", 1, p), statusBadRequest, "clean"},
		{"NUL in path", opOpenUpload, open("a\x00b", 1, p), statusBadRequest, "NUL"},
		{"backslash in path", opOpenUpload, open(`..\x`, 1, p), statusBadRequest, "backslash"},
		{"overlong path", opOpenUpload, open(strings.Repeat("a", maxPathLen+1), 1, p), statusBadRequest, "exceeds limit"},
		{"overlong name", opOpenUpload, open("d/"+strings.Repeat("n", 256), 1, p), statusBadRequest, "name of 256 bytes"},
		{"temporary name", opOpenUpload, open(tempPrefix+"x", 1, p), statusBadRequest, "temporary-file prefix"},
		{"empty path", opOpenUpload, open("", 1, p), statusBadRequest, "empty path"},
		{"negative size", opOpenUpload, open("n.bin", -1, p), statusBadRequest, "negative size"},
		{"chunker above the chunk limit", opOpenUpload, open("c.bin", 1, engine.ChunkerParams{Name: "fixed", Min: 1, Avg: 1, Max: engine.MaxChunkSize + 1}), statusBadRequest, "exceeds"},
		{"unknown chunker", opOpenUpload, open("c.bin", 1, engine.ChunkerParams{Name: "nope", Min: 1, Avg: 1, Max: 1}), statusBadRequest, "nope"},
		{"manifest of ..", opManifest, append(str("../x"), 0, 0), statusBadRequest, "stay inside the files root"},
		{"versions of NUL", opVersions, str("a\x00"), statusBadRequest, "NUL"},
		{"huge count", opMissing, func() []byte {
			e := enc{}
			e.string(sid)
			e.uvarint(0)
			e.uvarint(0)
			e.uvarint(1 << 40)
			return e.b
		}(), statusBadRequest, "exceeds limit"},
		{"missing delta of a million chunks", opMissing, missingDelta(0, copies(1<<16)), statusBadRequest, "limit 8192"},
		{"open asking about a delta of a million chunks", opOpenAsk, openAskDelta(copies(1 << 16)), statusBadRequest, "limit 8192"},
		{"open asking about a huge count", opOpenAsk, append(open("v.bin", 8<<10, p), fetchRefs(1<<40)...), statusBadRequest, "exceeds limit"},
		{"open asking with a path with ..", opOpenAsk, append(open("a/../../x", 1, p), 0), statusBadRequest, "stay inside the files root"},
		{"missing past the chunk limit", opMissing, missingDelta(uint64(engine.MaxManifestChunks), copies(1)), statusError, "at most"},
		{"commit delta of 8 million chunks", opCommit, commitDelta(copies(1 << 19)), statusError, "memory budget"},
		{"commit delta past the chunk limit", opCommit, commitDelta(copies(1 << 21)), statusError, "at most"},
		{"fetch delta of a huge count", opFetchDelta, fetchRefs(1 << 50), statusBadRequest, "exceeds limit"},
		{"trailing bytes", opSessions, []byte{1}, statusBadRequest, "no arguments"},
		{"unknown operation", 200, nil, statusBadRequest, "unknown operation"},
		{"cancel of a malformed session", opCancel, str("../../etc"), statusNotFound, "not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := roundTrip(t.Context(), conn, tc.op, tc.body)
			refusal(t, err, tc.status, tc.msg)
		})
	}
	// A fetch stream asking for more chunks than a request may hold.
	st, err := conn.OpenStreamSync(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	st.Write(appendFrame([]byte{streamFetch}, 0, fetchRefs(maxFetchRefs+1)))
	st.Close()
	var status [1]byte
	io.ReadFull(st, status[:])
	refusal(t, readRefusal(st, status[0], "refusal"), statusBadRequest, "exceeds limit")

	// The server still serves, and what it holds is what was pushed.
	if list, err := c.List(t.Context(), ""); err != nil || len(list) != 1 || list[0].Path != "v.bin" {
		t.Fatalf("after the hostile requests the server lists %v, %v", list, err)
	}
}

// zstdRLEFrame returns a zstd frame of blocks RLE blocks of 128 KiB each:
// four bytes a block for 128 KiB of output. With declare, the frame
// header states the content size; without, the decoder learns it only by
// decoding.
func zstdRLEFrame(blocks int, declare bool) []byte {
	const blockSize = 128 << 10
	b := []byte{0x28, 0xb5, 0x2f, 0xfd}
	if declare {
		b = append(b, 0xc0, 0x50) // 8-byte content size; window 1 MiB
		b = binary.LittleEndian.AppendUint64(b, uint64(blocks)*blockSize)
	} else {
		b = append(b, 0x00, 0x50) // no content size; window 1 MiB
	}
	for i := range blocks {
		h := uint32(blockSize)<<3 | 1<<1 // RLE
		if i == blocks-1 {
			h |= 1 // last block
		}
		b = append(b, byte(h), byte(h>>8), byte(h>>16), 'A')
	}
	return b
}

// TestHostileBombs sends chunks whose few bytes of zstd expand to
// gigabytes: each is refused once it passes the size its header claims,
// and the server's heap never holds more than a few chunks' worth.
func TestHostileBombs(t *testing.T) {
	ts, _ := confinedServer(t, ServerConfig{})
	c := ts.client(t)
	up, err := openSession(t.Context(), c, engine.UploadSpec{Path: "b.bin", Size: 1, Chunker: rabin(t)})
	if err != nil {
		t.Fatal(err)
	}
	sid := up.ID()
	up.Close()
	var manyFrames []byte
	for range 1024 {
		manyFrames = append(manyFrames, zstdRLEFrame(128, false)...) // 16 GiB in all
	}
	cases := []struct {
		name    string
		payload []byte
	}{
		{"4 GiB declared", zstdRLEFrame(32768, true)},
		{"4 GiB undeclared", zstdRLEFrame(32768, false)},
		{"16 GiB in 1024 frames", manyFrames},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := heapInUse()
			conn := rawConn(t, ts)
			rawHello(t, conn, ts.token)
			st, err := conn.OpenStreamSync(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			hdr := make([]byte, chunkHeaderLen)
			chunkHeader{ID: engine.SumChunk([]byte("A")), Codec: engine.CodecZstd, RawSize: engine.MaxChunkSize, PayloadLen: uint32(len(tc.payload))}.put(hdr)
			stop := peakHeap()
			start := time.Now()
			st.Write(appendFrame([]byte{streamData}, 0, []byte(sid)))
			st.Write(hdr)
			st.Write(tc.payload)
			if s, _, err := readFrame(st, 64); err != nil || s != statusOK {
				t.Fatalf("session frame: %d %v", s, err)
			}
			_, err = readAck(st)
			peak := stop()
			refusal(t, err, statusBadRequest, "zstd")
			// The chunk's payload and its 16 MiB of output, and the
			// client's copy of the payload, with slack for the runtime.
			if grown := int64(peak) - int64(base); grown > 96<<20 {
				t.Errorf("heap grew by %d MiB decoding a bomb", grown>>20)
			}
			t.Logf("%d-byte bomb refused in %v: %v; heap peak %d MiB above the start", len(tc.payload), time.Since(start).Round(time.Millisecond), err, (int64(peak)-int64(base))>>20)
		})
	}
	if has, err := ts.db.HasChunks(t.Context(), []engine.ChunkID{engine.SumChunk([]byte("A"))}); err != nil || has[0] {
		t.Fatalf("bomb indexed: %v %v", has, err)
	}
}

// TestHostileStreams: clients that open streams and then stall, hold
// on to what they asked for, or never use their connection lose the
// stream or the connection after the server's timeouts, with what they
// held released.
func TestHostileStreams(t *testing.T) {
	const memory = 130 << 20 // one control request of 64 MiB at a time
	ts, _ := confinedServer(t, ServerConfig{StallTimeout: 300 * time.Millisecond, MemoryBudget: memory, UnusedTimeout: 24 * time.Hour})
	c := ts.client(t)
	pushWith(t, c, writeFile(t, 4<<20, 5), "f.bin", engine.ChunkerParams{Name: "fixed", Min: 4 << 20, Avg: 4 << 20, Max: 4 << 20})
	_, m, err := c.Manifest(t.Context(), "f.bin", 0)
	if err != nil {
		t.Fatal(err)
	}
	up, err := openSession(t.Context(), c, engine.UploadSpec{Path: "s.bin", Size: 1, Chunker: rabin(t)})
	if err != nil {
		t.Fatal(err)
	}
	sid := up.ID()
	up.Close()
	// budgetFree waits until the whole memory budget is free (or, with
	// free false, until some of it is held).
	budget := func(t *testing.T, free bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			got := ts.memory.TryAcquire(memory)
			if got {
				ts.memory.Release(memory)
			}
			if got == free {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the memory budget was not free=%v in 10s", free)
			}
		}
	}
	budgetFree := func(t *testing.T) { t.Helper(); budget(t, true) }
	// reset waits for the server to end the stream and returns how.
	reset := func(t *testing.T, st *quic.Stream) error {
		t.Helper()
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, st)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the server kept a stalled stream open")
		}
		return err
	}

	t.Run("thousands of streams", func(t *testing.T) {
		conn := rawConn(t, ts)
		rawHello(t, conn, ts.token)
		hostileCases.Add(1)
		opened := 0
		var streams []*quic.Stream
		for range 5000 {
			st, err := conn.OpenStream()
			if err != nil {
				var limit *quic.StreamLimitReachedError
				if !errors.As(err, &limit) {
					t.Fatalf("stream %d: %v", opened, err)
				}
				continue
			}
			opened++
			st.Write([]byte{streamControl}) // and nothing more
			streams = append(streams, st)
		}
		if opened > ts.cfg.MaxStreams {
			t.Fatalf("opened %d streams on one connection, limit %d", opened, ts.cfg.MaxStreams)
		}
		for _, st := range streams {
			reset(t, st)
		}
		// Their credit is back: a request goes through.
		if _, err := roundTrip(t.Context(), conn, opSessions, nil); err != nil {
			t.Fatalf("after the stalled streams: %v", err)
		}
	})

	t.Run("control requests announced and never sent", func(t *testing.T) {
		conn := rawConn(t, ts)
		rawHello(t, conn, ts.token)
		base := heapInUse()
		stop := peakHeap()
		var streams []*quic.Stream
		for range 8 {
			hostileCases.Add(1)
			st, err := conn.OpenStreamSync(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			hdr := []byte{streamControl, opCommit, 0, 0, 0, 0}
			binary.BigEndian.PutUint32(hdr[2:], maxControlLen)
			st.Write(append(hdr, make([]byte, 1<<20)...)) // a start, then silence
			streams = append(streams, st)
		}
		for _, st := range streams {
			st.SetReadDeadline(time.Now().Add(10 * time.Second))
			status, msg, err := readFrame(st, 4096)
			if err != nil || status != statusBadRequest || !strings.Contains(string(msg), "stalled") {
				t.Errorf("stalled request: status %d %q %v", status, msg, err)
			}
		}
		// Eight requests of 64 MiB, 512 MiB if each were given what it
		// announced; the budget lets one be read at a time, and the heap
		// holds the garbage of those before it until the collector runs.
		if grown := int64(stop()) - int64(base); grown > 2*memory {
			t.Errorf("heap grew by %d MiB for requests never sent", grown>>20)
		}
		budgetFree(t)
	})

	t.Run("data stream never written", func(t *testing.T) {
		hostileCases.Add(1)
		conn := rawConn(t, ts)
		rawHello(t, conn, ts.token)
		st, err := conn.OpenStreamSync(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte{streamData})
		if err := reset(t, st); err != nil {
			t.Logf("stream ended: %v", err)
		}
	})

	t.Run("data stream stalled mid-chunk", func(t *testing.T) {
		hostileCases.Add(1)
		conn := rawConn(t, ts)
		rawHello(t, conn, ts.token)
		st, err := conn.OpenStreamSync(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, engine.MaxChunkSize)
		hdr := make([]byte, chunkHeaderLen)
		chunkHeader{ID: engine.SumChunk(data), Codec: engine.CodecRaw, RawSize: engine.MaxChunkSize, PayloadLen: engine.MaxChunkSize}.put(hdr)
		st.Write(appendFrame([]byte{streamData}, 0, []byte(sid)))
		st.Write(hdr)
		st.Write(data[:1<<20])
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		if s, _, err := readFrame(st, 64); err != nil || s != statusOK {
			t.Fatalf("session frame: %d %v", s, err)
		}
		_, err = readAck(st)
		refusal(t, err, statusError, "stalled")
		budgetFree(t)
	})

	t.Run("fetch never read", func(t *testing.T) {
		hostileCases.Add(1)
		conn := rawConn(t, ts)
		rawHello(t, conn, ts.token)
		st, err := conn.OpenStreamSync(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		ids := make([]engine.ChunkRef, 64)
		for i := range ids {
			ids[i] = m.Chunks[0] // 4 MiB of random bytes, 64 times
		}
		st.Write(appendFrame([]byte{streamFetch}, 0, encodeFetchRequest(ids)))
		st.Close()
		// Read nothing: the server fills the stream's window and stalls.
		budget(t, false)
		budgetFree(t)
		var se *quic.StreamError
		if err := reset(t, st); !errors.As(err, &se) || se.ErrorCode != codeProtocol {
			t.Errorf("fetch never read: %v, want a reset with code %d", err, codeProtocol)
		}
	})

	// The server still serves.
	if _, err := c.Sessions(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestHostileIdleConnection: a client that authenticates and then only
// sends keep-alives is closed once its connection has had no stream for
// the server's UnusedTimeout; one that never says hello, after the
// handshake timeout.
func TestHostileIdleConnection(t *testing.T) {
	ts, _ := confinedServer(t, ServerConfig{UnusedTimeout: 300 * time.Millisecond, HandshakeTimeout: 300 * time.Millisecond})
	tlsConf, err := clientTLS(ts.Addr().String(), ts.Fingerprint(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, hello := range []bool{true, false} {
		hostileCases.Add(1)
		conn, err := quic.DialAddr(t.Context(), ts.Addr().String(), tlsConf, &quic.Config{KeepAlivePeriod: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseWithError(0, "")
		want := codeProtocol
		if hello {
			rawHello(t, conn, ts.token)
			want = codeOK
		}
		var appErr *quic.ApplicationError
		if err := connClosed(t, conn); !errors.As(err, &appErr) || !appErr.Remote || int(appErr.ErrorCode) != want {
			t.Errorf("idle connection (hello %v) closed with %v, want application error %d", hello, err, want)
		}
	}
	// A real client dials again after the server closed its connection
	// as unused.
	c := ts.client(t)
	ctx := t.Context()
	if _, err := c.Sessions(ctx); err != nil {
		t.Fatal(err)
	}
	conn, _ := c.live(0)
	<-conn.Context().Done()
	if _, err := c.Sessions(ctx); err != nil {
		t.Fatalf("after the server closed the unused connection: %v", err)
	}
}

// TestHostileTokenLimits: one token cannot hold more upload sessions or
// connections than the server allows, each refused with a message that
// names the limit, and what it held before still works.
func TestHostileTokenLimits(t *testing.T) {
	ts, _ := confinedServer(t, ServerConfig{MaxSessionsPerToken: 3, MaxConnsPerToken: 2})
	c := ts.client(t) // connection 1
	spec := func(i int) engine.UploadSpec {
		return engine.UploadSpec{Path: fmt.Sprintf("s%d.bin", i), Size: 1, Chunker: rabin(t)}
	}
	var ids []string
	for i := range 3 {
		up, err := openSession(t.Context(), c, spec(i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, up.ID())
		up.Close()
	}
	_, err := openSession(t.Context(), c, spec(3))
	refusal(t, err, statusError, "3 open upload sessions")
	up, err := openSession(t.Context(), c, spec(0))
	if err != nil || up.ID() != ids[0] {
		t.Fatalf("re-attach at the limit: %v", err)
	}
	up.Close()
	if err := c.CancelSession(t.Context(), ids[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := openSession(t.Context(), c, spec(3)); err != nil {
		t.Fatalf("open after a cancel: %v", err)
	}
	list, err := c.Sessions(t.Context())
	if err != nil || len(list) != 3 {
		t.Fatalf("sessions: %d, %v", len(list), err)
	}

	hostileCases.Add(1)
	rawHello(t, rawConn(t, ts), ts.token) // connection 2
	_, err = ts.client(t).Sessions(t.Context())
	if err == nil || !strings.Contains(err.Error(), "2 connections open") {
		t.Errorf("third connection of a token: %v", err)
	}
	// Another token is not held back by the first one's connections.
	other, err := NewToken(ts.cfg.DataDir, "other")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Token = other }); err != nil {
		t.Errorf("another token: %v", err)
	}
}

// TestHostileFilesRoot: symlinks planted in the files root, pointing out
// of it, are never followed out by a commit, and pulls read the chunk
// store, never the files root.
func TestHostileFilesRoot(t *testing.T) {
	ts, outside := confinedServer(t, ServerConfig{})
	files := ts.cfg.FilesDir
	if err := os.MkdirAll(files, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{
		"dir":      outside,
		"file":     filepath.Join(outside, "canary"),
		"relative": "../../outside",
		"dangling": filepath.Join(outside, "new"),
	} {
		if err := os.Symlink(target, filepath.Join(files, name)); err != nil {
			t.Fatal(err)
		}
	}
	c := ts.client(t)
	local := writeFile(t, 256<<10, 9)
	cases := []struct{ path, want string }{
		{"dir/x.bin", "escapes"},
		{"dir/sub/x.bin", "escapes"},
		{"relative/x.bin", "escapes"},
		{"file", "holds a symlink"},
		{"dangling", "holds a symlink"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			hostileCases.Add(1)
			_, err := engine.Push(t.Context(), c, local, tc.path, engine.PushOptions{Chunker: rabin(t)})
			var se *ServerError
			if !errors.As(err, &se) || !strings.Contains(se.Msg, tc.want) {
				t.Errorf("push through a planted symlink: %v, want a refusal with %q", err, tc.want)
			}
			hostileCases.Add(1)
			if _, _, err := c.Manifest(t.Context(), tc.path, 0); !errors.As(err, &se) || se.Status != statusNotFound {
				t.Errorf("pull of a planted symlink: %v, want not found", err)
			}
		})
	}
	// The links are still links, and no temporary file is left.
	for _, name := range []string{"dir", "file", "relative", "dangling"} {
		if fi, err := os.Lstat(filepath.Join(files, name)); err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("%s: %v %v", name, fi.Mode(), err)
		}
	}
	filepath.WalkDir(files, func(p string, d os.DirEntry, err error) error {
		if err == nil && isTempName(d.Name()) {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
}

// TestHostileOtherToken: a token that names another token's upload
// session, in any request or on a data stream, gets "not found", and the
// session is left as it was; commits and chunks sent again change
// nothing.
func TestHostileOtherToken(t *testing.T) {
	ts, _ := confinedServer(t, ServerConfig{})
	alice := ts.client(t)
	up, err := openSession(t.Context(), alice, engine.UploadSpec{Path: "a.bin", Size: 12, Chunker: rabin(t)})
	if err != nil {
		t.Fatal(err)
	}
	sid := up.ID()
	up.Close()
	mallory, err := NewToken(ts.cfg.DataDir, "mallory")
	if err != nil {
		t.Fatal(err)
	}
	conn := rawConn(t, ts)
	rawHello(t, conn, mallory)
	str := func(s string) []byte {
		e := enc{}
		e.string(s)
		return e.b
	}
	chunk := []byte("hello, chunk")
	refs := []engine.ChunkRef{{ID: engine.SumChunk(chunk), Size: uint32(len(chunk))}}
	m := &engine.Manifest{Path: "a.bin", Size: 12, Chunker: rabin(t), Chunks: refs, Digests: engine.Digests{BLAKE3: blake3.Sum256(chunk), MD5: md5.Sum(chunk)}}
	commit := enc{}
	commit.string(sid)
	if err := encodeManifest(&commit, m, 0, nil); err != nil {
		t.Fatal(err)
	}
	sig := enc{}
	sig.string(sid)
	sig.uvarint(1)
	encodeSpans(&sig, nil)
	for name, req := range map[string]struct {
		op   byte
		body []byte
	}{
		"missing":   {opMissing, missingRequest{Session: sid, Refs: refs}.encode(nil)},
		"commit":    {opCommit, commit.b},
		"cancel":    {opCancel, str(sid)},
		"signature": {opSignature, sig.b},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := roundTrip(t.Context(), conn, req.op, req.body)
			refusal(t, err, statusNotFound, "not found")
		})
	}
	t.Run("data stream", func(t *testing.T) {
		hostileCases.Add(1)
		st, err := conn.OpenStreamSync(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		st.Write(appendFrame([]byte{streamData}, 0, []byte(sid)))
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		if status, msg, err := readFrame(st, 4096); status != statusNotFound || !strings.Contains(string(msg), "not found") {
			t.Errorf("data stream on another token's session: %d %q %v", status, msg, err)
		}
	})
	mc, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Token = mallory })
	if err != nil {
		t.Fatal(err)
	}
	if list, err := mc.Sessions(t.Context()); len(list) != 0 || err != nil {
		t.Errorf("mallory sees sessions %v, %v", list, err)
	}
	// Alice's session is untouched: no chunk recorded, still open.
	sp, err := ts.db.SessionProgress(t.Context(), sid)
	if err != nil || sp.Chunks != 0 || sp.Owner == "mallory" {
		t.Fatalf("alice's session after mallory: %+v %v", sp, err)
	}

	// Alice pushes; her commit and her chunks sent again change nothing.
	local := filepath.Join(t.TempDir(), "a")
	os.WriteFile(local, chunk, 0o644)
	push(t, alice, local, "a.bin")
	hostileCases.Add(1)
	if _, err := roundTrip(t.Context(), conn, opCommit, commit.b); err != nil {
		t.Logf("commit replayed by another token: %v", err)
	}
	vs, err := alice.Versions(t.Context(), "a.bin")
	if err != nil || len(vs) != 1 {
		t.Fatalf("versions after replays: %v %v", vs, err)
	}
}
