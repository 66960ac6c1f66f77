package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/chunksync/chunksync/engine"
)

// ErrCorruptRecord is returned, wrapped with the record's kind and key, when
// a record read from the index database fails to decode.
var ErrCorruptRecord = errors.New("corrupt index record")

// The records of the index database. Every value starts with a format
// version byte (recordVersion); integers are fixed-width big-endian, strings
// carry a fixed-width length, and decoders refuse trailing bytes, so every
// record has exactly one encoding. Times are Unix seconds (int64) and
// nanoseconds (uint32 below 1e9); they decode in UTC.
//
//	bucket            key                          value
//	meta              "format"                     format version byte
//	chunks            chunk ID (32)                chunkRecord
//	sessions          session ID (16)              sessionRecord
//	session-specs     BLAKE3(owner, spec) (32)     session ID (16)
//	session-chunks    session ID (16), pos (u64)   sessionRefRecord
//	versions          path, 0x00, number (u64)     versionRecord
//	pending-versions  path                         pendingRecord
const recordVersion = 1

const (
	// maxOwnerLen bounds a session owner, the name of the client token
	// that opened the session.
	maxOwnerLen = 256
	// maxChunkerNameLen bounds a chunker name in a record.
	maxChunkerNameLen = 255
	// sessionIDLen is the length of a session ID in bytes; its text form
	// is twice as long.
	sessionIDLen = 16
)

// chunkRecordLen is the length of an encoded chunkRecord.
const chunkRecordLen = 1 + 1 + 4 + 4

// sessionRefRecordLen is the length of an encoded sessionRefRecord.
const sessionRefRecordLen = 1 + len(engine.ChunkID{}) + 4

// corruptRecord builds the error for a record of kind under key that fails
// to decode.
func corruptRecord(kind string, key []byte, reason error) error {
	return fmt.Errorf("%w: %s record %x: %v", ErrCorruptRecord, kind, key, reason)
}

// recordReader reads the fields of a record in order. The first error sticks:
// later reads return zero values, and err reports it.
type recordReader struct {
	b   []byte
	err error
}

func (r *recordReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

func (r *recordReader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.fail("truncated %s: %d bytes left, want %d", what, len(r.b), n)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *recordReader) u8(what string) uint8 {
	if b := r.take(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (r *recordReader) u16(what string) uint16 {
	if b := r.take(2, what); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *recordReader) u32(what string) uint32 {
	if b := r.take(4, what); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *recordReader) u64(what string) uint64 {
	if b := r.take(8, what); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// version checks the leading format version byte.
func (r *recordReader) version() {
	if v := r.u8("version"); r.err == nil && v != recordVersion {
		r.fail("unknown record version %d", v)
	}
}

// str reads a string with a u8 or u16 length (lenBytes 1 or 2) of at most
// max bytes, which must be valid UTF-8.
func (r *recordReader) str(lenBytes int, max int, what string) string {
	var n int
	if lenBytes == 1 {
		n = int(r.u8(what + " length"))
	} else {
		n = int(r.u16(what + " length"))
	}
	if r.err == nil && n > max {
		r.fail("%s of %d bytes exceeds %d", what, n, max)
	}
	b := r.take(n, what)
	if r.err == nil && !utf8.Valid(b) {
		r.fail("%s is not valid UTF-8", what)
	}
	return string(b)
}

func (r *recordReader) time(what string) time.Time {
	sec := int64(r.u64(what + " seconds"))
	nsec := r.u32(what + " nanoseconds")
	if r.err != nil {
		return time.Time{}
	}
	if nsec >= 1e9 {
		r.fail("%s nanoseconds %d out of range", what, nsec)
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// end refuses trailing bytes and returns the first error.
func (r *recordReader) end() error {
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	return r.err
}

func appendString16(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendString8(b []byte, s string) []byte {
	return append(append(b, uint8(len(s))), s...)
}

func appendTime(b []byte, t time.Time) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(t.Unix()))
	return binary.BigEndian.AppendUint32(b, uint32(t.Nanosecond()))
}

// normTime returns t as it reads back from a record: in UTC, without a
// monotonic clock reading.
func normTime(t time.Time) time.Time { return time.Unix(t.Unix(), int64(t.Nanosecond())).UTC() }

// chunkRecord layout: version, codec (u8), size (u32), stored (u32).
func encodeChunkRecord(dst []byte, info ChunkInfo) []byte {
	dst = append(dst, recordVersion, byte(info.Codec))
	dst = binary.BigEndian.AppendUint32(dst, info.Size)
	return binary.BigEndian.AppendUint32(dst, info.Stored)
}

func decodeChunkRecord(key, val []byte) (ChunkInfo, error) {
	r := recordReader{b: val}
	r.version()
	info := ChunkInfo{Codec: engine.Codec(r.u8("codec")), Size: r.u32("size"), Stored: r.u32("stored size")}
	if err := r.end(); err != nil {
		return ChunkInfo{}, corruptRecord("chunk", key, err)
	}
	if err := checkChunkInfo(info); err != nil {
		return ChunkInfo{}, corruptRecord("chunk", key, err)
	}
	return info, nil
}

// checkChunkInfo refuses what no stored chunk can be.
func checkChunkInfo(info ChunkInfo) error {
	if info.Codec != engine.CodecRaw && info.Codec != engine.CodecZstd {
		return fmt.Errorf("unknown codec %d", uint8(info.Codec))
	}
	if info.Size > engine.MaxChunkSize {
		return fmt.Errorf("size %d above limit %d", info.Size, engine.MaxChunkSize)
	}
	if int64(info.Stored) > engine.MaxEncodedSize(info.Codec, info.Size) {
		return fmt.Errorf("%s chunk of %d bytes stored in %d", info.Codec, info.Size, info.Stored)
	}
	return nil
}

// sessionRecord layout: version, owner (u16 length), created, updated, then
// the spec: path (u16 length), size (u64, at most MaxInt64), mode (u32),
// mtime, chunker name (u8 length), min, avg, max (u32 each), poly (u64).
func encodeSessionRecord(dst []byte, s Session) []byte {
	dst = append(dst, recordVersion)
	dst = appendString16(dst, s.Owner)
	dst = appendTime(dst, s.Created)
	dst = appendTime(dst, s.Updated)
	return appendSpec(dst, s.Spec)
}

func appendSpec(dst []byte, spec engine.UploadSpec) []byte {
	dst = appendString16(dst, spec.Path)
	dst = binary.BigEndian.AppendUint64(dst, uint64(spec.Size))
	dst = binary.BigEndian.AppendUint32(dst, uint32(spec.Mode))
	dst = appendTime(dst, spec.ModTime)
	dst = appendString8(dst, spec.Chunker.Name)
	dst = binary.BigEndian.AppendUint32(dst, spec.Chunker.Min)
	dst = binary.BigEndian.AppendUint32(dst, spec.Chunker.Avg)
	dst = binary.BigEndian.AppendUint32(dst, spec.Chunker.Max)
	return binary.BigEndian.AppendUint64(dst, spec.Chunker.Poly)
}

// decodeSessionRecord decodes the session stored under key, a session ID.
func decodeSessionRecord(key, val []byte) (Session, error) {
	if len(key) != sessionIDLen {
		return Session{}, corruptRecord("session", key, fmt.Errorf("key of %d bytes, want %d", len(key), sessionIDLen))
	}
	r := recordReader{b: val}
	r.version()
	s := Session{ID: formatSessionID(key)}
	s.Owner = r.str(2, maxOwnerLen, "owner")
	s.Created = r.time("created")
	s.Updated = r.time("updated")
	s.Spec.Path = r.str(2, engine.MaxPathLen, "path")
	s.Spec.Size = int64(r.u64("size"))
	s.Spec.Mode = fs.FileMode(r.u32("mode"))
	s.Spec.ModTime = r.time("mtime")
	s.Spec.Chunker.Name = r.str(1, maxChunkerNameLen, "chunker name")
	s.Spec.Chunker.Min = r.u32("chunker min")
	s.Spec.Chunker.Avg = r.u32("chunker avg")
	s.Spec.Chunker.Max = r.u32("chunker max")
	s.Spec.Chunker.Poly = r.u64("chunker poly")
	if err := r.end(); err != nil {
		return Session{}, corruptRecord("session", key, err)
	}
	if err := checkSession(s.Owner, s.Spec); err != nil {
		return Session{}, corruptRecord("session", key, err)
	}
	return s, nil
}

// checkSession refuses an owner or spec that a session record cannot hold.
// The chunker parameters are not checked against the registry: that is the
// caller's business, and a record must stay readable if the registry
// changes.
func checkSession(owner string, spec engine.UploadSpec) error {
	switch {
	case len(owner) > maxOwnerLen:
		return fmt.Errorf("owner of %d bytes exceeds %d", len(owner), maxOwnerLen)
	case !utf8.ValidString(owner):
		return fmt.Errorf("owner is not valid UTF-8")
	case spec.Path == "":
		return fmt.Errorf("empty path")
	case len(spec.Path) > engine.MaxPathLen:
		return fmt.Errorf("path of %d bytes exceeds %d", len(spec.Path), engine.MaxPathLen)
	case !utf8.ValidString(spec.Path) || strings.IndexByte(spec.Path, 0) >= 0:
		return fmt.Errorf("path %q is not valid UTF-8 without NUL", spec.Path)
	case spec.Size < 0:
		return fmt.Errorf("negative size %d", spec.Size)
	case len(spec.Chunker.Name) > maxChunkerNameLen || !utf8.ValidString(spec.Chunker.Name):
		return fmt.Errorf("chunker name %q is too long or not UTF-8", spec.Chunker.Name)
	}
	return nil
}

// sessionRefRecord layout: version, chunk ID (32 bytes), size (u32).
func encodeSessionRefRecord(dst []byte, ref engine.ChunkRef) []byte {
	dst = append(dst, recordVersion)
	dst = append(dst, ref.ID[:]...)
	return binary.BigEndian.AppendUint32(dst, ref.Size)
}

func decodeSessionRefRecord(key, val []byte) (engine.ChunkRef, error) {
	if len(key) != sessionIDLen+8 {
		return engine.ChunkRef{}, corruptRecord("session chunk", key, fmt.Errorf("key of %d bytes, want %d", len(key), sessionIDLen+8))
	}
	r := recordReader{b: val}
	r.version()
	var ref engine.ChunkRef
	copy(ref.ID[:], r.take(len(ref.ID), "chunk id"))
	ref.Size = r.u32("size")
	if err := r.end(); err != nil {
		return engine.ChunkRef{}, corruptRecord("session chunk", key, err)
	}
	if ref.Size > engine.MaxChunkSize {
		return engine.ChunkRef{}, corruptRecord("session chunk", key, fmt.Errorf("size %d above limit %d", ref.Size, engine.MaxChunkSize))
	}
	return ref, nil
}

// sessionRefKey is the key of position pos of session sid.
func sessionRefKey(sid []byte, pos uint64) []byte {
	k := make([]byte, 0, sessionIDLen+8)
	k = append(k, sid...)
	return binary.BigEndian.AppendUint64(k, pos)
}

// decodeSessionSpecIndex decodes a session-specs value: the ID of the
// session it points to.
func decodeSessionSpecIndex(key, val []byte) ([]byte, error) {
	if len(val) != sessionIDLen {
		return nil, corruptRecord("session spec", key, fmt.Errorf("value of %d bytes, want %d", len(val), sessionIDLen))
	}
	return val, nil
}

// versionRecord layout: version, created, size (u64, at most MaxInt64),
// BLAKE3 (32 bytes), MD5 (16 bytes), chunker name (u8 length), min, avg,
// max (u32 each), poly (u64), then the manifest in engine's binary form
// (the rest of the value). The summary before the manifest lets Versions
// list a file's versions without decoding their manifests.
func encodeVersionRecord(dst []byte, v Version, manifest []byte) []byte {
	dst = append(dst, recordVersion)
	dst = appendTime(dst, v.Created)
	dst = binary.BigEndian.AppendUint64(dst, uint64(v.Size))
	dst = append(dst, v.Digests.BLAKE3[:]...)
	dst = append(dst, v.Digests.MD5[:]...)
	dst = appendString8(dst, v.Chunker.Name)
	dst = binary.BigEndian.AppendUint32(dst, v.Chunker.Min)
	dst = binary.BigEndian.AppendUint32(dst, v.Chunker.Avg)
	dst = binary.BigEndian.AppendUint32(dst, v.Chunker.Max)
	dst = binary.BigEndian.AppendUint64(dst, v.Chunker.Poly)
	return append(dst, manifest...)
}

// decodeVersionRecord decodes the version stored under key and returns it
// with the encoded manifest, a slice of val that has not been decoded.
func decodeVersionRecord(key, val []byte) (Version, []byte, error) {
	path, n, err := parseVersionKey(key)
	if err != nil {
		return Version{}, nil, corruptRecord("version", key, err)
	}
	r := recordReader{b: val}
	r.version()
	v := Version{Path: path, Number: n}
	v.Created = r.time("created")
	v.Size = int64(r.u64("size"))
	copy(v.Digests.BLAKE3[:], r.take(32, "BLAKE3"))
	copy(v.Digests.MD5[:], r.take(16, "MD5"))
	v.Chunker.Name = r.str(1, maxChunkerNameLen, "chunker name")
	v.Chunker.Min = r.u32("chunker min")
	v.Chunker.Avg = r.u32("chunker avg")
	v.Chunker.Max = r.u32("chunker max")
	v.Chunker.Poly = r.u64("chunker poly")
	if r.err == nil && v.Size < 0 {
		r.fail("negative size %d", v.Size)
	}
	if r.err == nil && len(r.b) == 0 {
		r.fail("no manifest")
	}
	if r.err != nil {
		return Version{}, nil, corruptRecord("version", key, r.err)
	}
	return v, r.b, nil
}

// pendingRecord layout: version, the number (u64) of the version pending.
func encodePendingRecord(dst []byte, n uint64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, recordVersion), n)
}

// decodePendingRecord decodes the pending version stored under key, a path.
func decodePendingRecord(key, val []byte) (PendingVersion, error) {
	r := recordReader{b: val}
	r.version()
	pv := PendingVersion{Path: string(key), Number: r.u64("number")}
	if r.err == nil && !validCataloguePath(pv.Path) {
		r.fail("malformed path in key")
	}
	if r.err == nil && pv.Number == 0 {
		r.fail("version number 0")
	}
	if err := r.end(); err != nil {
		return PendingVersion{}, corruptRecord("pending version", key, err)
	}
	return pv, nil
}

// versionKey is the key of version n of path. Paths hold no NUL, so
// path+NUL is a prefix that no other path's keys share.
func versionKey(path string, n uint64) []byte {
	k := make([]byte, 0, len(path)+1+8)
	k = append(k, path...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, n)
}

// versionPrefix is the prefix of every version key of path.
func versionPrefix(path string) []byte {
	return append([]byte(path), 0)
}

func parseVersionKey(key []byte) (string, uint64, error) {
	if len(key) < 2+8 || key[len(key)-9] != 0 {
		return "", 0, fmt.Errorf("malformed key")
	}
	path := key[:len(key)-9]
	if len(path) > engine.MaxPathLen || !utf8.Valid(path) || strings.IndexByte(string(path), 0) >= 0 {
		return "", 0, fmt.Errorf("malformed path in key")
	}
	n := binary.BigEndian.Uint64(key[len(key)-8:])
	if n == 0 {
		return "", 0, fmt.Errorf("version number 0")
	}
	return string(path), n, nil
}

// maxSessionChunks bounds the positions of a session's chunk list, as a
// manifest bounds its chunks.
const maxSessionChunks = engine.MaxManifestChunks
