package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"time"

	"github.com/chunksync/chunksync/engine"
)

// ALPN is the TLS application protocol of chunksync, version 1.
const ALPN = "chunksync/1"

// ProtocolVersion is the newest version of the protocol this package
// speaks, which a client asks for in its hello. Version 2 adds the FEC
// port to the hello reply and the path loss request, version 3 the open
// that asks about the file's first chunks; a server answers the hellos of
// every version it speaks each in their own, and a client that an older
// server refuses says hello again a version lower (see Client.dial).
const ProtocolVersion = 3

// minProtocolVersion is the oldest version this package speaks.
const minProtocolVersion = 1

// helloMagic opens every hello so that a stray peer is refused at once.
var helloMagic = [4]byte{'C', 'S', 'Y', 'N'}

// Stream kinds: the first byte of every stream a client opens.
const (
	streamHello   byte = 1
	streamControl byte = 2
	streamData    byte = 3
	streamFetch   byte = 4
)

// Control operations.
const (
	opOpenUpload byte = 1
	opMissing    byte = 2
	opCommit     byte = 3
	opSessions   byte = 4
	opCancel     byte = 5
	opManifest   byte = 6
	opList       byte = 7
	opVersions   byte = 8
	opCollect    byte = 9
	opSignature  byte = 10
	opFetchDelta byte = 11
	opPathLoss   byte = 12 // version 2
	opOpenAsk    byte = 13 // version 3
)

// opVersion is the protocol version that brought op.
func opVersion(op byte) uint32 {
	switch op {
	case opPathLoss:
		return 2
	case opOpenAsk:
		return 3
	}
	return 1
}

// Response statuses. Anything but statusOK carries a message.
const (
	statusOK         byte = 0
	statusError      byte = 1 // request refused; message says why
	statusBadRequest byte = 2 // malformed request
	statusAuth       byte = 3 // token refused
	statusNotFound   byte = 4 // session or version unknown
	statusMismatch   byte = 5 // chunk bytes do not match their ID
	statusMissing    byte = 6 // commit names chunks the server lacks
	statusBusy       byte = 7 // hello: the token has the connections it may
)

// Application error codes on connection and stream close.
const (
	codeOK           = 0
	codeProtocol     = 1
	codeUnauthorized = 2
	codeShutdown     = 3
	codeBusy         = 4 // the token has the connections it may (statusBusy)
)

// Limits a server enforces on what a peer sends. Decoders check every
// length and count against them before allocating.
const (
	maxTokenLen    = 256
	maxMessageLen  = 256
	maxPathLen     = 4096
	maxMissingRefs = 8192
	maxFetchRefs   = 4096
	// maxControlLen bounds one control message; a commit carries the
	// manifest, about 37 bytes per chunk.
	maxControlLen = 64 << 20
	// chunkHeaderLen is ID, codec, raw size, payload length.
	chunkHeaderLen = 32 + 1 + 4 + 4
	ackLen         = 32 + 1
)

// errMalformed is wrapped by every decoder error of this package.
var errMalformed = errors.New("malformed message")

// enc appends protocol values to a buffer.
type enc struct{ b []byte }

func (e *enc) byte(v byte)      { e.b = append(e.b, v) }
func (e *enc) u32(v uint32)     { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *enc) bytes(v []byte)   { e.uvarint(uint64(len(v))); e.b = append(e.b, v...) }
func (e *enc) string(v string)  { e.uvarint(uint64(len(v))); e.b = append(e.b, v...) }
func (e *enc) raw(v []byte)     { e.b = append(e.b, v...) }
func (e *enc) bool(v bool) {
	if v {
		e.byte(1)
	} else {
		e.byte(0)
	}
}

// dec reads protocol values; the first error sticks and later reads return
// zero values, so a decoder checks err once at the end.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{errMalformed}, args...)...)
	}
}

func (d *dec) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail("%s: need %d bytes, have %d", what, n, len(d.b))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) byte(what string) byte {
	if v := d.take(1, what); v != nil {
		return v[0]
	}
	return 0
}

func (d *dec) u32(what string) uint32 {
	if v := d.take(4, what); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (d *dec) uvarint(what string) uint64 { return readVarint(d, what, binary.Uvarint) }

func (d *dec) varint(what string) int64 { return readVarint(d, what, binary.Varint) }

// readVarint reads one varint with read (binary.Uvarint or binary.Varint).
func readVarint[T uint64 | int64](d *dec, what string, read func([]byte) (T, int)) T {
	if d.err != nil {
		return 0
	}
	v, n := read(d.b)
	if n <= 0 {
		d.fail("%s: bad varint", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a count and checks it against limit and against the bytes
// left, each element taking at least minSize bytes.
func (d *dec) count(what string, limit, minSize int) int {
	n := d.uvarint(what)
	if d.err != nil {
		return 0
	}
	if n > uint64(limit) || n*uint64(minSize) > uint64(len(d.b)) {
		d.fail("%s: %d exceeds limit %d or message size", what, n, limit)
		return 0
	}
	return int(n)
}

func (d *dec) bytes(what string, limit int) []byte {
	return d.take(d.count(what, limit, 1), what)
}

func (d *dec) string(what string, limit int) string {
	return string(d.bytes(what, limit))
}

func (d *dec) id(what string) (id engine.ChunkID) {
	copy(id[:], d.take(len(id), what))
	return id
}

// end fails if bytes are left over.
func (d *dec) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}

// appendFrame appends one length-prefixed frame to dst: kind byte, u32
// length, body. Every body this package frames is bounded far below 4 GiB
// (maxControlLen at most).
func appendFrame(dst []byte, kind byte, body []byte) []byte {
	return append(appendFrameHeader(dst, kind, len(body)), body...)
}

func appendFrameHeader(dst []byte, kind byte, n int) []byte {
	dst = append(dst, kind)
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

// writeFrame writes one frame to w: a small one in one piece, a large body
// as it is after its header rather than as a copy, which for a reply of
// MiBs would hold it twice.
func writeFrame(w io.Writer, kind byte, body []byte) error {
	if len(body) > math.MaxUint32 {
		return fmt.Errorf("frame of %d bytes is too large", len(body))
	}
	if len(body) <= smallFrame {
		_, err := w.Write(appendFrame(make([]byte, 0, 5+len(body)), kind, body))
		return err
	}
	if _, err := w.Write(appendFrameHeader(make([]byte, 0, 5), kind, len(body))); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

// smallFrame is the largest body writeFrame copies behind its header.
const smallFrame = 4 << 10

// readFrame reads one frame, refusing a body longer than limit before
// allocating it.
func readFrame(r io.Reader, limit int) (kind byte, body []byte, err error) {
	kind, n, err := readFrameHeader(r, limit)
	if err != nil {
		return 0, nil, err
	}
	body = make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, fmt.Errorf("%w: truncated frame: %w", errMalformed, err)
	}
	return kind, body, nil
}

// readFrameHeader reads a frame's kind and body length, refusing a length
// above limit.
func readFrameHeader(r io.Reader, limit int) (kind byte, n int, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, 0, err
	}
	l := binary.BigEndian.Uint32(hdr[1:])
	if uint64(l) > uint64(limit) {
		return 0, 0, fmt.Errorf("%w: frame of %d bytes exceeds limit %d", errMalformed, l, limit)
	}
	return hdr[0], int(l), nil
}

// readLastFrame reads a frame that must be the last thing on the stream and
// reads on to the end of the stream, so that QUIC counts the stream as done
// and gives the peer credit for a new one.
func readLastFrame(r io.Reader, limit int) (kind byte, body []byte, err error) {
	kind, body, err = readFrame(r, limit)
	if err != nil {
		return 0, nil, err
	}
	if err := readEnd(r); err != nil {
		return 0, nil, err
	}
	return kind, body, nil
}

// readEnd reads to the end of a stream whose last frame has been read.
func readEnd(r io.Reader) error {
	var extra [1]byte
	switch n, err := io.ReadFull(r, extra[:]); {
	case n > 0:
		return fmt.Errorf("%w: bytes after the last frame", errMalformed)
	case errors.Is(err, io.EOF):
		return nil
	default:
		return err
	}
}

// hello is the first message of a connection, sent by the client.
type hello struct {
	Version uint32
	Token   string
}

func (h hello) encode() []byte {
	e := enc{}
	e.raw(helloMagic[:])
	e.u32(h.Version)
	e.string(h.Token)
	return e.b
}

func decodeHello(b []byte) (hello, error) {
	d := dec{b: b}
	if m := d.take(4, "magic"); d.err == nil && [4]byte(m) != helloMagic {
		return hello{}, fmt.Errorf("%w: not a chunksync hello", errMalformed)
	}
	h := hello{Version: d.u32("version"), Token: d.string("token", maxTokenLen)}
	return h, d.end()
}

// helloReply is the server's answer to a hello, in the version of the
// hello.
type helloReply struct {
	Version uint32
	// MaxChunkSize and MaxStreams tell the client the server's limits.
	MaxChunkSize uint32
	MaxStreams   uint32
	// FECPort, from version 2, is the UDP port where the server serves
	// connections over forward error correction (FECConn); 0 is none.
	FECPort uint16
}

func (h helloReply) encode() []byte {
	e := enc{}
	e.u32(h.Version)
	e.u32(h.MaxChunkSize)
	e.u32(h.MaxStreams)
	if h.Version >= 2 {
		e.b = binary.BigEndian.AppendUint16(e.b, h.FECPort)
	}
	return e.b
}

// decodeHelloReply reads a reply in the version it names, which must be
// one this package speaks.
func decodeHelloReply(b []byte) (helloReply, error) {
	d := dec{b: b}
	h := helloReply{Version: d.u32("version"), MaxChunkSize: d.u32("max chunk size"), MaxStreams: d.u32("max streams")}
	if d.err == nil && (h.Version < minProtocolVersion || h.Version > ProtocolVersion) {
		return h, fmt.Errorf("%w: hello reply in protocol version %d, this client speaks %d to %d", errMalformed, h.Version, minProtocolVersion, ProtocolVersion)
	}
	if h.Version >= 2 {
		if v := d.take(2, "fec port"); v != nil {
			h.FECPort = binary.BigEndian.Uint16(v)
		}
	}
	return h, d.end()
}

// pathLoss is the reply to a path loss request: the server's counts of
// the connection the request came on. Losses of what the server sends,
// the chunks of a fetch, are only visible there.
type pathLoss struct {
	PacketsSent, PacketsReceived, PacketsLost uint64
	MinRTT, SmoothedRTT                       time.Duration
}

func (p pathLoss) encode() []byte {
	e := enc{}
	e.uvarint(p.PacketsSent)
	e.uvarint(p.PacketsReceived)
	e.uvarint(p.PacketsLost)
	e.uvarint(uint64(p.MinRTT))
	e.uvarint(uint64(p.SmoothedRTT))
	return e.b
}

func decodePathLoss(b []byte) (pathLoss, error) {
	d := dec{b: b}
	p := pathLoss{PacketsSent: d.uvarint("packets sent"), PacketsReceived: d.uvarint("packets received"), PacketsLost: d.uvarint("packets lost")}
	for _, rtt := range []*time.Duration{&p.MinRTT, &p.SmoothedRTT} {
		ns := d.uvarint("round-trip time")
		if d.err == nil && ns > uint64(time.Hour) {
			d.fail("round-trip time of %d ns exceeds an hour", ns)
		}
		*rtt = time.Duration(ns)
	}
	return p, d.end()
}

func encodeSpec(e *enc, s engine.UploadSpec) {
	e.string(s.Path)
	e.varint(s.Size)
	e.uvarint(uint64(s.Mode))
	e.varint(s.ModTime.UnixNano())
	encodeParams(e, s.Chunker)
}

func decodeSpec(d *dec) engine.UploadSpec {
	s := engine.UploadSpec{Path: d.string("path", maxPathLen)}
	s.Size = d.varint("size")
	mode := d.uvarint("mode")
	if mode > math.MaxUint32 {
		d.fail("mode %#o out of range", mode)
	}
	s.Mode = fs.FileMode(mode).Perm()
	s.ModTime = time.Unix(0, d.varint("mtime"))
	s.Chunker = decodeParams(d)
	if d.err == nil && s.Size < 0 {
		d.fail("negative size %d", s.Size)
	}
	return s
}

func encodeParams(e *enc, p engine.ChunkerParams) {
	e.string(p.Name)
	e.uvarint(uint64(p.Min))
	e.uvarint(uint64(p.Avg))
	e.uvarint(uint64(p.Max))
	e.uvarint(p.Poly)
}

func decodeParams(d *dec) engine.ChunkerParams {
	p := engine.ChunkerParams{Name: d.string("chunker", 64)}
	for _, f := range []*uint32{&p.Min, &p.Avg, &p.Max} {
		v := d.uvarint("chunker size")
		if v > engine.MaxChunkSize {
			d.fail("chunker size %d exceeds %d", v, engine.MaxChunkSize)
		}
		*f = uint32(v)
	}
	p.Poly = d.uvarint("polynomial")
	return p
}

// missingRequest asks which of a run of chunks the server lacks. With a
// base version the refs travel as a chunk list delta against that
// version's chunks (engine.AppendChunkListDelta), so an unchanged run costs
// a few bytes; without one they are listed in full.
type missingRequest struct {
	Session string
	First   uint64
	Base    uint64
	Refs    []engine.ChunkRef
	// Delta is the encoded chunk list when Base is not 0; the server
	// decodes it once it has looked the base up.
	Delta []byte
}

// encode lists r.Refs, as a delta against base when r.Base is not 0.
func (r missingRequest) encode(base []engine.ChunkRef) []byte {
	e := enc{b: make([]byte, 0, 64+len(r.Refs)*37)}
	e.string(r.Session)
	e.uvarint(r.First)
	e.uvarint(r.Base)
	if r.Base != 0 {
		e.bytes(engine.AppendChunkListDelta(nil, base, r.Refs))
		return e.b
	}
	encodeRefs(&e, r.Refs)
	return e.b
}

func decodeMissingRequest(b []byte) (missingRequest, error) {
	d := dec{b: b}
	r := missingRequest{Session: d.string("session", 64), First: d.uvarint("first"), Base: d.uvarint("base")}
	if r.Base != 0 {
		r.Delta = d.bytes("chunk list delta", maxControlLen)
	} else {
		r.Refs = decodeRefs(&d, maxMissingRefs)
	}
	if d.err == nil && r.First > math.MaxInt32 {
		d.fail("first chunk %d out of range", r.First)
	}
	return r, d.end()
}

// decodeRefs reads a count of at most limit and that many chunk refs.
func decodeRefs(d *dec, limit int) []engine.ChunkRef {
	refs := make([]engine.ChunkRef, d.count("chunk count", limit, 33))
	for i := range refs {
		refs[i].ID = d.id("chunk id")
		size := d.uvarint("chunk size")
		if d.err == nil && (size == 0 || size > engine.MaxChunkSize) {
			d.fail("chunk size %d outside 1..%d", size, engine.MaxChunkSize)
		}
		refs[i].Size = uint32(size)
	}
	return refs
}

// encodeRefs lists refs in full, as decodeRefs reads them.
func encodeRefs(e *enc, refs []engine.ChunkRef) {
	e.uvarint(uint64(len(refs)))
	for _, ref := range refs {
		e.raw(ref.ID[:])
		e.uvarint(uint64(ref.Size))
	}
}

// encodeBitmap packs one bit per chunk, set when the chunk is missing.
func encodeBitmap(missing []bool) []byte {
	e := enc{}
	e.uvarint(uint64(len(missing)))
	bits := make([]byte, (len(missing)+7)/8)
	for i, m := range missing {
		if m {
			bits[i/8] |= 1 << (i % 8)
		}
	}
	e.raw(bits)
	return e.b
}

func decodeBitmap(b []byte, want int) ([]bool, error) {
	d := dec{b: b}
	n := d.uvarint("count")
	if d.err == nil && n != uint64(want) {
		return nil, fmt.Errorf("%w: bitmap of %d chunks, asked about %d", errMalformed, n, want)
	}
	bits := d.take((want+7)/8, "bitmap")
	if err := d.end(); err != nil {
		return nil, err
	}
	missing := make([]bool, want)
	for i := range missing {
		missing[i] = bits[i/8]&(1<<(i%8)) != 0
	}
	return missing, nil
}

// encodeManifest writes m in full (base version 0) or, when the peer holds
// version baseVersion of the same path (base), as its header and a chunk
// list delta against base.
func encodeManifest(e *enc, m *engine.Manifest, baseVersion uint64, base *engine.Manifest) error {
	e.uvarint(baseVersion)
	if baseVersion == 0 {
		mb, err := m.MarshalBinary()
		if err != nil {
			return err
		}
		e.bytes(mb)
		return nil
	}
	encodeSpec(e, engine.UploadSpec{Path: m.Path, Size: m.Size, Mode: m.Mode, ModTime: m.ModTime, Chunker: m.Chunker})
	e.raw(m.Digests.BLAKE3[:])
	e.raw(m.Digests.MD5[:])
	e.bytes(engine.AppendChunkListDelta(nil, base.Chunks, m.Chunks))
	return nil
}

// decodeManifest reads what encodeManifest wrote, looking the base version
// up with base, and validates the result. base learns how many chunks the
// delta describes before they are decoded, and may refuse them.
func decodeManifest(d *dec, base func(path string, n, chunks uint64) (*engine.Manifest, error)) (*engine.Manifest, error) {
	n := d.uvarint("base version")
	m := new(engine.Manifest)
	if n == 0 {
		mb := d.bytes("manifest", maxControlLen)
		if d.err != nil {
			return nil, d.err
		}
		return m, m.UnmarshalBinary(mb)
	}
	spec := decodeSpec(d)
	copy(m.Digests.BLAKE3[:], d.take(32, "blake3"))
	copy(m.Digests.MD5[:], d.take(16, "md5"))
	delta := d.bytes("chunk list delta", maxControlLen)
	if d.err != nil {
		return nil, d.err
	}
	count, err := chunkListCount(delta)
	if err != nil {
		return nil, err
	}
	b, err := base(spec.Path, n, count)
	if err != nil {
		return nil, err
	}
	m.Path, m.Size, m.Mode, m.ModTime, m.Chunker = spec.Path, spec.Size, spec.Mode, spec.ModTime, spec.Chunker
	if m.Chunks, _, err = engine.DecodeChunkListDelta(delta, b.Chunks); err != nil {
		return nil, err
	}
	return m, m.Validate()
}
