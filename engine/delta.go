package engine

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
	"runtime"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/xxh3"
)

// A delta carries the bytes of changed chunks as a patch of the data they
// replaced, the base, which the receiver already has. It is the second level
// of a re-sync: chunks stay large (they are what the index and the manifests
// list, and each costs about 86 stored bytes), and the bytes of the chunks
// the receiver lacks travel as deltas against the old chunks they replaced
// (see ReplacedBase).
//
// The sender finds the base's bytes through a signature of it: the base
// cut into small content-defined sub-chunks, each named by a short hash. In
// a push the server has the base and sends its signature to the client; in
// a pull the server, which has both, makes the signature itself, with
// hashes long enough that they never falsely match, and sends only the
// delta. The sender cuts its target the same way and
// looks its sub-chunks up in the signature. The delta then says, in target
// order, which runs of base sub-chunks to copy and where bytes of its own
// (literals) go, and carries the literals in one zstd frame whose
// dictionary is the copied bytes on either side of each literal (up to
// literalContext bytes), so that new bytes compress with the words around
// them at hand. A first form used every copied sub-chunk as the
// dictionary and let zstd find the copies: on x/tools releases it was
// 8–35% larger and took two to three times as long, most of it building
// the dictionary's tables.
//
// A pull once had a third form, zstd over the whole base as its
// dictionary: its deltas of x/tools releases were 20–25% smaller, but zstd
// built its tables over every byte of the base on every delta, up to 8 MB
// of random writes into a 4 MB table, and a pull took 0.24–0.29 s against
// 0.13–0.15 s with a signature (rsync: 0.22–0.24 s).
//
// The encoded forms, integers as uvarints:
//
//	signature  0x02, log2 of the sub-chunk size, hash length,
//	           hashes (one per base sub-chunk, in order: the low bytes
//	           of its XXH3-64, little-endian)
//	delta      kind, then by kind:
//	  0 raw            the target's bytes
//	  1 sub-chunks     log2 of the sub-chunk size, the byte length of the ops,
//	                   ops in target order until the target is described:
//	                   n<<1 | 0 then start (varint, relative to the base
//	                   sub-chunk after the previous copy): copy n ≥ 1 base
//	                   sub-chunks; n<<1 | 1: n ≥ 1 bytes of literal; then a
//	                   CRC-32C of the whole target (4 bytes, little-endian),
//	                   then, when there are literals, a zstd frame with a
//	                   checksum holding them in order, whose dictionary is,
//	                   for each literal, the up to literalContext copied
//	                   bytes before and after it

const (
	// MaxDeltaSize is the largest target a delta may carry; callers split
	// longer runs of changed chunks.
	MaxDeltaSize = MaxChunkSize
	// MaxDeltaBase is the largest base a delta may be made against. It
	// bounds the zstd window, so the memory of an encoder, and is far more
	// than a run of changed chunks replaces (see ReplacedBase).
	MaxDeltaBase = 8 << 20
	// MinSubChunkSize and MaxSubChunkSize bound the average sub-chunk
	// size of a signature, a power of two. The minimum sub-chunk, a
	// quarter of the average, covers the gear hash's 64-byte window.
	MinSubChunkSize = 256
	MaxSubChunkSize = 64 << 10
	// MinSignatureHashLen and MaxSignatureHashLen bound the bytes of a
	// sub-chunk's hash in a signature. A false match (another sub-chunk
	// with the same hash) makes a delta that fails to decode, and costs a
	// resend of the chunks without it; EncodeDelta keeps its chance near
	// 2^(1-8h) per changed region (see its matching rule).
	MinSignatureHashLen = 3
	MaxSignatureHashLen = 8
)

// The defaults, chosen by measuring re-syncs of x/tools releases (see
// bench.BenchmarkResync, 16 KiB chunks): a push with sub-chunks of 256
// bytes nominal (320 on average) moves 11–15% fewer bytes than with 512 and
// 31–36% fewer than with 1 KiB; with 4-byte hashes 10–12% fewer than with
// 6. Three bytes would save another 5–7% for a 256 times higher chance of
// a false match.
const (
	defaultSubChunkLog2 = 8
	defaultHashLen      = 4
)

const (
	signatureVersion = 2
	signatureHeader  = 3

	deltaKindRaw       = 0
	deltaKindSubChunks = 1
)

// DeltaOption sets a parameter of AppendSignature or EncodeDelta; each
// ignores the options that are not its own.
type DeltaOption func(*deltaOptions) error

type deltaOptions struct {
	subChunkLog2 uint8
	hashLen      int
	level        zstd.EncoderLevel
}

// WithSubChunkSize sets the nominal size of the sub-chunks a signature
// names, a power of two from MinSubChunkSize to MaxSubChunkSize (default
// 256); they are 1.25 times that on average. Smaller sub-chunks find more of
// the base around each edit and cost more signature bytes: the hash length
// per sub-chunk of base.
func WithSubChunkSize(n int) DeltaOption {
	return func(o *deltaOptions) error {
		if n < MinSubChunkSize || n > MaxSubChunkSize || n&(n-1) != 0 {
			return fmt.Errorf("sub-chunk size %d is not a power of two in %d..%d", n, MinSubChunkSize, MaxSubChunkSize)
		}
		o.subChunkLog2 = uint8(bits.TrailingZeros(uint(n)))
		return nil
	}
}

// WithSignatureHashLen sets the bytes of each sub-chunk's hash in a
// signature, MinSignatureHashLen to MaxSignatureHashLen (default 4).
func WithSignatureHashLen(n int) DeltaOption {
	return func(o *deltaOptions) error {
		if n < MinSignatureHashLen || n > MaxSignatureHashLen {
			return fmt.Errorf("signature hash length %d outside %d..%d", n, MinSignatureHashLen, MaxSignatureHashLen)
		}
		o.hashLen = n
		return nil
	}
}

// WithDeltaLevel sets the zstd level the sender compresses with, 1 to 22
// as in the zstd command; klauspost/compress maps it to its four levels
// (1–2: fastest, 3–5: default, 6–9: better, 10 and up: best); default
// literalsLevel.
func WithDeltaLevel(level int) DeltaOption {
	return func(o *deltaOptions) error {
		if level < 1 || level > 22 {
			return fmt.Errorf("zstd level %d outside 1..22", level)
		}
		o.level = zstd.EncoderLevelFromZstd(level)
		return nil
	}
}

// literalsLevel is the zstd level of a delta's literals, measured on
// re-syncs of x/tools releases (bench.TestResyncOverQUICBeatsRsync and
// chunksync push against a running server). Their dictionary is at most
// literalContext bytes around each, and zstd builds its tables for every
// byte of it on every delta: at "better" that took 35 ms of the 46 of a
// push's encoding, most of it in random writes to a 4 MB table. At
// "default" a re-sync push took 0.16–0.21 s instead of 0.19–0.29 and moved
// 5% more bytes; "fastest" 12% more and no faster.
const literalsLevel = zstd.SpeedDefault

func newDeltaOptions(opts []DeltaOption) (deltaOptions, error) {
	o := deltaOptions{subChunkLog2: defaultSubChunkLog2, hashLen: defaultHashLen, level: literalsLevel}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return o, fmt.Errorf("delta: %w", err)
		}
	}
	return o, nil
}

// AppendSignature appends the signature of base to dst: what a sender needs
// to make a delta against base without having it.
func AppendSignature(dst, base []byte, opts ...DeltaOption) ([]byte, error) {
	o, err := newDeltaOptions(opts)
	if err != nil {
		return dst, err
	}
	if len(base) > MaxDeltaBase {
		return dst, fmt.Errorf("delta: base of %d bytes exceeds %d", len(base), MaxDeltaBase)
	}
	dst = append(dst, signatureVersion, o.subChunkLog2, byte(o.hashLen))
	var sum [8]byte
	for start, end := range subChunks(base, o.subChunkLog2) {
		binary.LittleEndian.PutUint64(sum[:], subChunkHash(base[start:end]))
		dst = append(dst, sum[:o.hashLen]...)
	}
	return dst, nil
}

// subChunkHash is the hash a signature keeps the low hashLen bytes of:
// XXH3-64. It need not resist an attacker (a false match fails the target's
// CRC-32C and chunk IDs, and costs a resend), only spread real data evenly,
// and on sub-chunks of a few hundred bytes it runs about ten times as fast
// as BLAKE3, which spent half the time of a signature and of a delta.
func subChunkHash(b []byte) uint64 { return xxh3.Hash(b) }

// signature is a decoded signature.
type signature struct {
	log2    uint8
	hashLen int
	hashes  []byte
}

func (s signature) count() int { return len(s.hashes) / s.hashLen }

func (s signature) hash(i int) uint64 { return hashKey(s.hashes[i*s.hashLen : (i+1)*s.hashLen]) }

func hashKey(b []byte) uint64 {
	var k [8]byte
	copy(k[:], b)
	return binary.LittleEndian.Uint64(k[:])
}

func parseSignature(b []byte) (signature, error) {
	if len(b) < signatureHeader || b[0] != signatureVersion {
		return signature{}, fmt.Errorf("%w: delta signature: bad header", ErrMalformed)
	}
	s := signature{log2: b[1], hashLen: int(b[2]), hashes: b[signatureHeader:]}
	switch {
	case !validSubChunkLog2(s.log2):
		return signature{}, fmt.Errorf("%w: delta signature: sub-chunk size 2^%d", ErrMalformed, s.log2)
	case s.hashLen < MinSignatureHashLen || s.hashLen > MaxSignatureHashLen:
		return signature{}, fmt.Errorf("%w: delta signature: hash length %d", ErrMalformed, s.hashLen)
	case len(s.hashes)%s.hashLen != 0:
		return signature{}, fmt.Errorf("%w: delta signature: %d hash bytes", ErrMalformed, len(s.hashes))
	}
	return s, nil
}

// EncodeDelta appends to dst a delta that turns the base that sig describes
// into target. It refuses a target longer than MaxDeltaSize, and, with an
// error wrapping ErrMalformed, a signature AppendSignature would not write.
// Its options are the zstd level; the signature fixes the rest.
//
// A target sub-chunk whose hash the signature lists counts as found only
// beside another found one that continues it in the base (the base
// sub-chunk before or after). A false match then takes two in a row, or
// one beside a true match whose base neighbour it collides with: about
// 2^(1-8·hashLen) per changed region, rather than the number of base
// sub-chunks times the number of target sub-chunks over 2^(8·hashLen). The
// price is the rare isolated true match.
func EncodeDelta(dst, target, sig []byte, opts ...DeltaOption) ([]byte, error) {
	o, err := newDeltaOptions(opts)
	if err != nil {
		return dst, err
	}
	if len(target) > MaxDeltaSize {
		return dst, fmt.Errorf("delta: target of %d bytes exceeds %d", len(target), MaxDeltaSize)
	}
	s, err := parseSignature(sig)
	if err != nil {
		return dst, err
	}
	n := s.count()
	if n > MaxDeltaBase/MinSubChunkSize*4 {
		return dst, fmt.Errorf("%w: delta signature of %d sub-chunks", ErrMalformed, n)
	}
	// The first base sub-chunk of each hash; a later one with the same
	// hash holds the same bytes as far as the sender can tell.
	index := make(map[uint64]int32, n)
	for i := n - 1; i >= 0; i-- {
		index[s.hash(i)] = int32(i)
	}
	// The target's sub-chunks, each with the base sub-chunk of the same
	// hash, or -1.
	type subChunk struct{ start, end, base int32 }
	subs := make([]subChunk, 0, len(target)>>s.log2+1)
	mask := uint64(1)<<(8*s.hashLen) - 1
	for start, end := range subChunks(target, s.log2) {
		base, ok := index[subChunkHash(target[start:end])&mask]
		if !ok {
			base = -1
		}
		subs = append(subs, subChunk{int32(start), int32(end), base})
	}
	// A match counts only beside one that continues it in the base.
	copied := make([]bool, len(subs))
	for k, x := range subs {
		if x.base < 0 {
			continue
		}
		prev := k > 0 && subs[k-1].base >= 0 && subs[k-1].base == x.base-1
		next := k+1 < len(subs) && subs[k+1].base >= 0 && subs[k+1].base == x.base+1
		copied[k] = prev || next
	}
	var ops, literals []byte
	var lits []span
	nextBase := int32(0)
	for k := 0; k < len(subs); {
		j := k + 1
		if copied[k] {
			for j < len(subs) && copied[j] && subs[j].base == subs[j-1].base+1 {
				j++
			}
			ops = binary.AppendUvarint(ops, uint64(j-k)<<1)
			ops = binary.AppendVarint(ops, int64(subs[k].base-nextBase))
			nextBase = subs[j-1].base + 1
		} else {
			for j < len(subs) && !copied[j] {
				j++
			}
			lit := span{int(subs[k].start), int(subs[j-1].end)}
			ops = binary.AppendUvarint(ops, uint64(lit.end-lit.start)<<1|1)
			literals = append(literals, target[lit.start:lit.end]...)
			lits = append(lits, lit)
		}
		k = j
	}

	start := len(dst)
	dst = append(dst, deltaKindSubChunks, s.log2)
	dst = binary.AppendUvarint(dst, uint64(len(ops)))
	dst = append(dst, ops...)
	dst = binary.LittleEndian.AppendUint32(dst, crc32.Checksum(target, castagnoli))
	if len(literals) > 0 {
		dst = zstdDeltaEncode(dst, literals, literalDict(target, lits), o.level)
	}
	if len(dst)-start > 1+len(target) {
		dst = append(append(dst[:start], deltaKindRaw), target...)
	}
	return dst, nil
}

// castagnoli is the CRC-32C table of the checksum a sub-chunk delta
// carries of its whole target: the copies it makes from the base are in no
// zstd frame, and a wrong base must not pass unnoticed.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// literalContext is how many copied bytes on either side of a literal go
// into the dictionary its bytes are compressed with: on x/tools releases 4
// KiB made deltas 6% smaller than 1 KiB, and 16 KiB 2% smaller still for
// half as much time again.
const literalContext = 4 << 10

// span is a range of bytes, [start, end).
type span struct{ start, end int }

// literalDict returns the dictionary of the literals lits of target: for
// each, the up to literalContext bytes before and after it that are not
// part of another literal or already taken.
func literalDict(target []byte, lits []span) []byte {
	var dict []byte
	taken := 0
	for i, l := range lits {
		dict = append(dict, target[max(l.start-literalContext, taken):l.start]...)
		next := len(target)
		if i+1 < len(lits) {
			next = lits[i+1].start
		}
		taken = min(l.end+literalContext, next)
		dict = append(dict, target[l.end:taken]...)
	}
	return dict
}

// DecodeDelta appends to dst[:0] the target that payload, a delta made by
// EncodeDelta, makes of base. It refuses, with an
// error wrapping ErrMalformed, a payload that does not decode to exactly
// rawSize bytes, that names sub-chunks base does not have, whose zstd frame
// has no checksum or fails it, or that is otherwise not one the encoders
// write; it never holds more than rawSize bytes of output nor a dictionary
// larger than base.
//
// A delta applied to another base than its own, or damaged on the way,
// fails on its checksum, unless the bytes it uses are the same in both.
// The checksum is 32 bits and a raw delta has none, so the caller still
// verifies the result against the chunk IDs and, if that fails, fetches
// the chunks without a delta.
func DecodeDelta(dst, base, payload []byte, rawSize uint32) ([]byte, error) {
	if rawSize > MaxDeltaSize {
		return nil, malformedDelta("target size %d exceeds %d", rawSize, MaxDeltaSize)
	}
	if len(payload) == 0 {
		return nil, malformedDelta("empty")
	}
	kind, rest := payload[0], payload[1:]
	switch kind {
	case deltaKindRaw:
		if len(rest) != int(rawSize) {
			return nil, malformedDelta("raw target of %d bytes claims %d", len(rest), rawSize)
		}
		return append(dst[:0], rest...), nil
	case deltaKindSubChunks:
		return decodeSubChunkDelta(dst, base, rest, rawSize)
	}
	return nil, malformedDelta("unknown kind %d", kind)
}

// decodeSubChunkDelta decodes the rest of a sub-chunk delta (after its
// kind): it lays out the target from the ops, copies the base sub-chunks,
// then decodes the literals with the dictionary their neighbours make.
func decodeSubChunkDelta(dst, base, rest []byte, rawSize uint32) ([]byte, error) {
	if len(rest) < 1 || !validSubChunkLog2(rest[0]) {
		return nil, malformedDelta("bad sub-chunk size")
	}
	log2 := rest[0]
	n, k := binary.Uvarint(rest[1:])
	if k <= 0 || n > uint64(len(rest)-1-k) {
		return nil, malformedDelta("ops of %d bytes in %d", n, len(rest))
	}
	ops, rest := rest[1+k:1+k+int(n)], rest[1+k+int(n):]
	if len(rest) < 4 {
		return nil, malformedDelta("no checksum")
	}
	sum, frame := binary.LittleEndian.Uint32(rest), rest[4:]
	if len(base) > MaxDeltaBase {
		return nil, malformedDelta("base of %d bytes exceeds %d", len(base), MaxDeltaBase)
	}
	if cap(dst) < int(rawSize) {
		dst = make([]byte, 0, rawSize)
	}
	target := dst[:rawSize]
	var ends []int // of the base's sub-chunks, cut on the first copy
	var lits []span
	literals, off, nextBase := 0, 0, uint64(0)
	for len(ops) > 0 {
		tag, k := binary.Uvarint(ops)
		if k <= 0 || tag>>1 == 0 || tag>>1 > uint64(int(rawSize)-off) {
			return nil, malformedDelta("bad op at byte %d of the target", off)
		}
		ops = ops[k:]
		count := tag >> 1
		if tag&1 == 1 {
			lits = append(lits, span{off, off + int(count)})
			literals += int(count)
			off += int(count)
			continue
		}
		d, k := binary.Varint(ops)
		if k <= 0 {
			return nil, malformedDelta("bad copy")
		}
		ops = ops[k:]
		if ends == nil {
			ends = subChunkEnds(base, log2)
		}
		first := int64(nextBase) + d
		if first < 0 || first > int64(len(ends)) || count > uint64(int64(len(ends))-first) {
			return nil, malformedDelta("copy of %d sub-chunks from %d outside a base of %d", count, first, len(ends))
		}
		from := 0
		if first > 0 {
			from = ends[first-1]
		}
		nextBase = uint64(first) + count
		to := ends[nextBase-1]
		if to-from > int(rawSize)-off {
			return nil, malformedDelta("copy past the target's %d bytes", rawSize)
		}
		off += copy(target[off:], base[from:to])
	}
	if off != int(rawSize) {
		return nil, malformedDelta("ops describe %d bytes, claims %d", off, rawSize)
	}
	if literals > 0 {
		// The literals decode into a buffer of their own, then move into
		// place.
		lit, err := zstdDeltaDecode(nil, frame, literalDict(target, lits), uint32(literals))
		if err != nil {
			return nil, err
		}
		for _, l := range lits {
			lit = lit[copy(target[l.start:l.end], lit):]
		}
	} else if len(frame) != 0 {
		return nil, malformedDelta("%d bytes of literals where the ops have none", len(frame))
	}
	if crc32.Checksum(target, castagnoli) != sum {
		return nil, malformedDelta("checksum mismatch: a wrong base, or damage")
	}
	return target, nil
}

func validSubChunkLog2(l uint8) bool {
	return l >= uint8(bits.TrailingZeros(MinSubChunkSize)) && l <= uint8(bits.TrailingZeros(MaxSubChunkSize))
}

func malformedDelta(format string, args ...any) error {
	return fmt.Errorf("%w: delta: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// The zstd coders of deltas. A dictionary belongs to an encoder or decoder,
// not to a call, so each call takes one from a pool and sets its
// dictionary. An encoder's window must reach from the end of the target to
// the start of the dictionary, and the window is fixed when the encoder is
// made, so encoders are pooled by level and window. A pooled encoder keeps
// its last dictionary (a copy of it, and the slice) until its next use or
// until the pool drops it.
//
// An encoder or decoder with its tables and window holds up to tens of MiB,
// and coding is CPU-bound: deltaCoders lets as many code at once as there
// are cores, so that a server answering many peers holds a bounded number
// of them instead of one per request.
const (
	minDeltaWindowLog = 16
	maxDeltaWindowLog = 26 // holds MaxDeltaBase + MaxDeltaSize
)

const (
	zstdMagic        = 0xFD2FB528
	zstdChecksumFlag = 1 << 2 // in the frame header descriptor
)

var (
	deltaEncoders [4][maxDeltaWindowLog - minDeltaWindowLog + 1]sync.Pool
	deltaDecoders sync.Pool
	deltaCoders   = make(chan struct{}, runtime.GOMAXPROCS(0))
)

func zstdDeltaEncode(dst, target, dict []byte, level zstd.EncoderLevel) []byte {
	deltaCoders <- struct{}{}
	defer func() { <-deltaCoders }()
	wlog := max(bits.Len(uint(len(dict)+len(target))), minDeltaWindowLog)
	pool := &deltaEncoders[level-zstd.SpeedFastest][wlog-minDeltaWindowLog]
	enc, _ := pool.Get().(*zstd.Encoder)
	if enc == nil {
		var err error
		enc, err = zstd.NewWriter(nil,
			zstd.WithEncoderLevel(level),
			zstd.WithEncoderConcurrency(1),
			// Four bytes that catch a wrong base or a damaged delta
			// in DecodeDelta, before the chunk IDs are checked.
			zstd.WithEncoderCRC(true),
			zstd.WithWindowSize(1<<wlog),
			zstd.WithSingleSegment(true),
		)
		if err != nil {
			panic("engine: zstd delta encoder with constant options: " + err.Error())
		}
	}
	// An empty dictionary rather than none: switching between the two
	// makes the encoder build its tables anew.
	if err := enc.ResetWithOptions(nil, zstd.WithEncoderDictRaw(0, dict)); err != nil {
		panic("engine: zstd delta encoder: " + err.Error())
	}
	dst = enc.EncodeAll(target, dst)
	pool.Put(enc)
	return dst
}

func zstdDeltaDecode(dst, frame, dict []byte, rawSize uint32) ([]byte, error) {
	// The checksum catches a wrong base, so a frame must have one.
	if len(frame) < 5 || binary.LittleEndian.Uint32(frame) != zstdMagic || frame[4]&zstdChecksumFlag == 0 {
		return nil, malformedDelta("not a zstd frame with a checksum")
	}
	deltaCoders <- struct{}{}
	defer func() { <-deltaCoders }()
	dec, _ := deltaDecoders.Get().(*zstd.Decoder)
	if dec == nil {
		var err error
		dec, err = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(MaxDeltaSize),
			zstd.WithDecoderMaxWindow(1<<maxDeltaWindowLog),
			// DecodeAll never grows dst beyond its capacity.
			zstd.WithDecodeAllCapLimit(true),
		)
		if err != nil {
			panic("engine: zstd delta decoder with constant options: " + err.Error())
		}
	}
	defer deltaDecoders.Put(dec)
	opt := zstd.WithDecoderDictDelete()
	if len(dict) > 0 {
		opt = zstd.WithDecoderDictRaw(0, dict)
	}
	if err := dec.ResetWithOptions(nil, opt); err != nil {
		return nil, fmt.Errorf("delta: zstd decoder: %w", err)
	}
	defer dec.ResetWithOptions(nil, zstd.WithDecoderDictDelete())
	if cap(dst) < int(rawSize) {
		dst = make([]byte, 0, rawSize)
	}
	out, err := dec.DecodeAll(frame, dst[:0:rawSize])
	if err != nil {
		return nil, malformedDelta("zstd: %v", err)
	}
	if len(out) != int(rawSize) {
		return nil, malformedDelta("decodes to %d bytes, claims %d", len(out), rawSize)
	}
	return out, nil
}

// subChunks yields the start and end of each sub-chunk of b. A sub-chunk
// is at least a quarter and at most four times 2^log2 bytes; past the
// minimum it ends after the first byte where the gear hash has log2 bits
// zero, which makes 1.25·2^log2 bytes on average. The hash, its table and
// its loop are fastcdc's; the cut is not fastcdc's normalized one, whose
// test depends on the distance from the last cut: after an edit, that
// takes longer to fall back into step with the old cuts, and the deltas of
// x/tools releases grew by a tenth with it.
func subChunks(b []byte, log2 uint8) func(yield func(int, int) bool) {
	minSize, maxSize := 1<<log2/4, 1<<log2*4
	mask := gearMask(int(log2))
	return func(yield func(int, int) bool) {
		for start := 0; start < len(b); {
			n := min(len(b)-start, maxSize)
			if n > minSize {
				// Warm the hash up over the window before the first
				// possible cut, as fastcdc does.
				var fp uint64
				for _, x := range b[start+minSize-gearWindow : start+minSize] {
					fp = fp<<1 + gearTable[x]
				}
				n, _, _ = gearCut(b[start:start+n], minSize, fp, mask)
			}
			if !yield(start, start+n) {
				return
			}
			start += n
		}
	}
}

// subChunkEnds returns the end of each sub-chunk of b.
func subChunkEnds(b []byte, log2 uint8) []int {
	ends := make([]int, 0, len(b)>>log2+1)
	for _, end := range subChunks(b, log2) {
		ends = append(ends, end)
	}
	return ends
}

// ChunkSpan is the range [Start, End) of indices into a chunk list.
type ChunkSpan struct{ Start, End int }

// Len is the number of chunks in the span.
func (s ChunkSpan) Len() int { return s.End - s.Start }

// Replacement is a run of consecutive chunks of a new chunk list that the
// old list lacks, and the chunks of the old list that it replaced: the base
// a delta for the run is made against.
type Replacement struct {
	New, Old ChunkSpan
}

// ReplacedBase pairs every maximal run of consecutive chunks of new that old
// does not hold with the chunks of old it replaced. The rule:
//
//  1. The anchors are the longest sequence of chunks of new that old holds
//     in the same order (each chunk ID taken at its first place in old).
//  2. A run's base is the chunks of old strictly between the anchors on
//     either side of the run, or from the start or to the end of old where
//     there is no anchor on that side.
//  3. When that is empty (the run was inserted, or the lists share no
//     chunk), the base is the chunks of old that overlap the run's byte
//     range in new.
//  4. A base is at most four times the run's bytes and at most
//     MaxDeltaBase: a longer one keeps the chunks nearest the run's place
//     in old (its offset after the left anchor, carried over) as long as
//     they fit, and may end up empty.
//
// Chunks of new that old holds out of order are in no run: the receiver has
// them. The result is in the order of new.
func ReplacedBase(old, new []ChunkRef) []Replacement {
	first := make(map[ChunkID]int, len(old))
	for i := len(old) - 1; i >= 0; i-- {
		first[old[i].ID] = i
	}
	oldOff := chunkOffsets(old)
	newOff := chunkOffsets(new)
	// anchor[i] is the old index of new chunk i if it is an anchor, else -1.
	anchor := anchorChain(old, new, first)

	var reps []Replacement
	leftNew, leftOld := -1, -1 // the last anchor before i
	for i := 0; i < len(new); {
		if anchor[i] >= 0 {
			leftNew, leftOld = i, anchor[i]
			i++
			continue
		}
		if _, held := first[new[i].ID]; held {
			i++
			continue
		}
		run := ChunkSpan{i, i + 1}
		for run.End < len(new) && anchor[run.End] < 0 {
			if _, held := first[new[run.End].ID]; held {
				break
			}
			run.End++
		}
		rightOld := len(old)
		for j := run.End; j < len(new); j++ {
			if anchor[j] >= 0 {
				rightOld = anchor[j]
				break
			}
		}
		base := ChunkSpan{leftOld + 1, rightOld}
		runStart, runEnd := newOff[run.Start], newOff[run.End]
		if base.Len() <= 0 {
			base = overlapping(oldOff, runStart, runEnd)
		}
		limit := min(4*(runEnd-runStart), MaxDeltaBase)
		if oldOff[base.End]-oldOff[base.Start] > limit {
			// Where the run would sit in old had nothing before it
			// changed since the left anchor.
			leftEnd := int64(0)
			if leftNew >= 0 {
				leftEnd = newOff[leftNew+1]
			}
			at := oldOff[base.Start] + (runStart - leftEnd)
			base = nearest(oldOff, base, at, limit)
		}
		reps = append(reps, Replacement{New: run, Old: base})
		i = run.End
	}
	return reps
}

// chunkOffsets returns the offset of each chunk and, last, the total size.
func chunkOffsets(refs []ChunkRef) []int64 {
	off := make([]int64, len(refs)+1)
	for i, r := range refs {
		off[i+1] = off[i] + int64(r.Size)
	}
	return off
}

// anchorChain returns, for each chunk of new, its index in old if it is on
// the longest chain of chunks of new whose first indices in old increase,
// else -1.
func anchorChain(old, new []ChunkRef, first map[ChunkID]int) []int {
	anchor := make([]int, len(new))
	// Patience sorting: tails[k] is the new index ending the best chain
	// of length k+1 found so far; prev links each chunk to its chain.
	var tails []int
	prev := make([]int, len(new))
	pos := make([]int, len(new))
	for i, r := range new {
		anchor[i] = -1
		p, ok := first[r.ID]
		if !ok || old[p].Size != r.Size {
			pos[i] = -1
			continue
		}
		pos[i] = p
		k, _ := slices.BinarySearchFunc(tails, p, func(t, p int) int { return pos[t] - p })
		if k > 0 {
			prev[i] = tails[k-1]
		} else {
			prev[i] = -1
		}
		if k == len(tails) {
			tails = append(tails, i)
		} else {
			tails[k] = i
		}
	}
	if len(tails) > 0 {
		for i := tails[len(tails)-1]; i >= 0; i = prev[i] {
			anchor[i] = pos[i]
		}
	}
	return anchor
}

// overlapping returns the chunks whose bytes overlap [start, end).
func overlapping(off []int64, start, end int64) ChunkSpan {
	n := len(off) - 1
	// The first chunk ending after start, the first starting at or after end.
	s, _ := slices.BinarySearch(off[1:], start+1)
	e, _ := slices.BinarySearch(off[:n], end)
	if s > e {
		s = e
	}
	return ChunkSpan{s, e}
}

// nearest returns the largest span within within whose bytes fit limit,
// grown one chunk at a time from the chunk at offset at, each time on the
// side whose next chunk is nearer to at.
func nearest(off []int64, within ChunkSpan, at, limit int64) ChunkSpan {
	at = min(max(at, off[within.Start]), off[within.End]-1)
	c := within.Start
	for c+1 < within.End && off[c+1] <= at {
		c++
	}
	if off[c+1]-off[c] > limit {
		return ChunkSpan{c, c}
	}
	s := ChunkSpan{c, c + 1}
	for {
		size := off[s.End] - off[s.Start]
		canLeft := s.Start > within.Start && size+off[s.Start]-off[s.Start-1] <= limit
		canRight := s.End < within.End && size+off[s.End+1]-off[s.End] <= limit
		switch {
		case canLeft && (!canRight || at-off[s.Start] <= off[s.End]-at):
			s.Start--
		case canRight:
			s.End++
		default:
			return s
		}
	}
}
