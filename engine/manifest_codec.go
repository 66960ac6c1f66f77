package engine

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// The binary form of a manifest, version 1. Integers are varints as
// encoding/binary writes them, in their shortest form (a decoder refuses
// any other, so a manifest has exactly one encoding):
//
//	"CSM" 0x01
//	path            uvarint length, UTF-8 bytes
//	size            varint
//	mode            uvarint (fits uint32)
//	mtime           varint Unix nanoseconds; math.MinInt64 for the zero time
//	chunker name    uvarint length, bytes
//	min, avg, max   uvarint each (fit uint32)
//	poly            uvarint
//	chunk count     uvarint
//	chunks          count × (32-byte ID, uvarint size)
//	BLAKE3          32 bytes
//	MD5             16 bytes
const (
	manifestMagic   = "CSM"
	manifestVersion = 1
)

const (
	// MaxManifestChunks is the most chunks a manifest may list. Decoders
	// refuse larger counts before they allocate the chunk list.
	MaxManifestChunks = 1 << 24
	// MaxPathLen is the longest path, in bytes, that a manifest may carry.
	MaxPathLen = 4096
	// maxChunkerNameLen bounds a chunker name on the wire; registered
	// names are far shorter.
	maxChunkerNameLen = 64
	// minChunkEntryLen is the smallest encoded chunk entry: an ID and a
	// one-byte size.
	minChunkEntryLen = len(ChunkID{}) + 1
	digestsLen       = 32 + 16
	// zeroModTime stands for the zero time.Time, which has no Unix
	// nanosecond form.
	zeroModTime = math.MinInt64
)

// MarshalBinary encodes m in the versioned binary form that UnmarshalBinary
// reads. It refuses, with an error wrapping ErrMalformed, a manifest that
// Validate refuses.
func (m *Manifest) MarshalBinary() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	n := len(manifestMagic) + 1 + 6*binary.MaxVarintLen64 + len(m.Path) +
		binary.MaxVarintLen64 + len(m.Chunker.Name) + 4*binary.MaxVarintLen64 +
		binary.MaxVarintLen64 + len(m.Chunks)*(len(ChunkID{})+binary.MaxVarintLen32) + digestsLen
	b := make([]byte, 0, n)
	b = append(b, manifestMagic...)
	b = append(b, manifestVersion)
	b = binary.AppendUvarint(b, uint64(len(m.Path)))
	b = append(b, m.Path...)
	b = binary.AppendVarint(b, m.Size)
	b = binary.AppendUvarint(b, uint64(m.Mode))
	b = binary.AppendVarint(b, encodeModTime(m.ModTime))
	b = binary.AppendUvarint(b, uint64(len(m.Chunker.Name)))
	b = append(b, m.Chunker.Name...)
	b = binary.AppendUvarint(b, uint64(m.Chunker.Min))
	b = binary.AppendUvarint(b, uint64(m.Chunker.Avg))
	b = binary.AppendUvarint(b, uint64(m.Chunker.Max))
	b = binary.AppendUvarint(b, m.Chunker.Poly)
	b = binary.AppendUvarint(b, uint64(len(m.Chunks)))
	for _, c := range m.Chunks {
		b = append(b, c.ID[:]...)
		b = binary.AppendUvarint(b, uint64(c.Size))
	}
	b = append(b, m.Digests.BLAKE3[:]...)
	b = append(b, m.Digests.MD5[:]...)
	return b, nil
}

// UnmarshalBinary decodes the form that MarshalBinary writes into m. It
// refuses, with an error wrapping ErrMalformed that names the problem, input
// that is truncated, has trailing bytes, is of another version, or describes
// a manifest that Validate refuses; m is then left unchanged. ModTime
// decodes in UTC.
func (m *Manifest) UnmarshalBinary(b []byte) error {
	d := manifestDecoder{b: b}
	if len(b) < len(manifestMagic)+1 || string(b[:len(manifestMagic)]) != manifestMagic {
		return malformedManifest("bad magic")
	}
	if v := b[len(manifestMagic)]; v != manifestVersion {
		return malformedManifest("unsupported version %d", v)
	}
	d.off = len(manifestMagic) + 1

	var out Manifest
	pathLen, err := d.uvarint("path length")
	if err != nil {
		return err
	}
	if pathLen == 0 {
		return malformedManifest("empty path")
	}
	if pathLen > MaxPathLen {
		return malformedManifest("path of %d bytes exceeds %d", pathLen, MaxPathLen)
	}
	if out.Path, err = d.str(int(pathLen), "path"); err != nil {
		return err
	}
	if out.Size, err = d.varint("size"); err != nil {
		return err
	}
	mode, err := d.uvarint("mode")
	if err != nil {
		return err
	}
	if mode > math.MaxUint32 {
		return malformedManifest("mode %#x does not fit 32 bits", mode)
	}
	out.Mode = fs.FileMode(mode)
	mtime, err := d.varint("mtime")
	if err != nil {
		return err
	}
	out.ModTime = decodeModTime(mtime)

	nameLen, err := d.uvarint("chunker name length")
	if err != nil {
		return err
	}
	if nameLen > maxChunkerNameLen {
		return malformedManifest("chunker name of %d bytes exceeds %d", nameLen, maxChunkerNameLen)
	}
	if out.Chunker.Name, err = d.str(int(nameLen), "chunker name"); err != nil {
		return err
	}
	for _, f := range []struct {
		dst  *uint32
		what string
	}{{&out.Chunker.Min, "chunker min"}, {&out.Chunker.Avg, "chunker avg"}, {&out.Chunker.Max, "chunker max"}} {
		v, err := d.uvarint(f.what)
		if err != nil {
			return err
		}
		if v > math.MaxUint32 {
			return malformedManifest("%s %d does not fit 32 bits", f.what, v)
		}
		*f.dst = uint32(v)
	}
	if out.Chunker.Poly, err = d.uvarint("chunker poly"); err != nil {
		return err
	}
	if err := validateChunkerParams(out.Chunker); err != nil {
		return err
	}

	count, err := d.uvarint("chunk count")
	if err != nil {
		return err
	}
	if count > MaxManifestChunks {
		return malformedManifest("chunk count %d exceeds %d", count, MaxManifestChunks)
	}
	if rest := len(b) - d.off - digestsLen; rest < 0 || count > uint64(rest/minChunkEntryLen) {
		return malformedManifest("truncated: %d chunks need more than the %d bytes left", count, len(b)-d.off)
	}
	if count > 0 {
		out.Chunks = make([]ChunkRef, count)
	}
	for i := range out.Chunks {
		c := &out.Chunks[i]
		copy(c.ID[:], b[d.off:])
		d.off += len(c.ID)
		size, err := d.uvarint("chunk size")
		if err != nil {
			return fmt.Errorf("chunk %d: %w", i, err)
		}
		if size > math.MaxUint32 {
			return malformedManifest("chunk %d: size %d does not fit 32 bits", i, size)
		}
		c.Size = uint32(size)
	}
	if len(b)-d.off < digestsLen {
		return malformedManifest("truncated digests")
	}
	d.off += copy(out.Digests.BLAKE3[:], b[d.off:])
	d.off += copy(out.Digests.MD5[:], b[d.off:])
	if d.off != len(b) {
		return malformedManifest("%d trailing bytes", len(b)-d.off)
	}
	if err := out.validateContent(); err != nil {
		return err
	}
	*m = out
	return nil
}

// Validate checks m against the rules every decoded manifest obeys: a
// non-empty UTF-8 path of at most MaxPathLen bytes without NUL, a
// non-negative size, a ModTime with a Unix nanosecond form (or the zero
// time), valid chunker parameters, at most MaxManifestChunks chunks, each of
// a size in 1..Chunker.Max, and sizes that add up to Size. Errors wrap
// ErrMalformed.
func (m *Manifest) Validate() error {
	if err := validateChunkerParams(m.Chunker); err != nil {
		return err
	}
	if len(m.Chunks) > MaxManifestChunks {
		return malformedManifest("chunk count %d exceeds %d", len(m.Chunks), MaxManifestChunks)
	}
	if !m.ModTime.IsZero() {
		n := m.ModTime.UnixNano()
		if n == zeroModTime || !time.Unix(0, n).Equal(m.ModTime) {
			return malformedManifest("mtime %v outside the Unix nanosecond range", m.ModTime)
		}
	}
	return m.validateContent()
}

// validateContent checks what Validate checks except what the decoder has
// already checked while reading.
func (m *Manifest) validateContent() error {
	switch {
	case m.Path == "":
		return malformedManifest("empty path")
	case len(m.Path) > MaxPathLen:
		return malformedManifest("path of %d bytes exceeds %d", len(m.Path), MaxPathLen)
	case strings.IndexByte(m.Path, 0) >= 0:
		return malformedManifest("path %q contains NUL", m.Path)
	case !utf8.ValidString(m.Path):
		return malformedManifest("path %q is not valid UTF-8", m.Path)
	case m.Size < 0:
		return malformedManifest("negative size %d", m.Size)
	}
	max := m.Chunker.Max
	if max > MaxChunkSize {
		max = MaxChunkSize
	}
	var total int64
	for i, c := range m.Chunks {
		if c.Size == 0 || c.Size > max {
			return malformedManifest("chunk %d: size %d outside 1..%d", i, c.Size, max)
		}
		total += int64(c.Size)
	}
	if total != m.Size {
		return malformedManifest("chunk sizes add up to %d, size is %d", total, m.Size)
	}
	return nil
}

func validateChunkerParams(p ChunkerParams) error {
	if err := ValidateParams(p); err != nil {
		return fmt.Errorf("%w: manifest: %v", ErrMalformed, err)
	}
	return nil
}

func malformedManifest(format string, args ...any) error {
	return fmt.Errorf("%w: manifest: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func encodeModTime(t time.Time) int64 {
	if t.IsZero() {
		return zeroModTime
	}
	return t.UnixNano()
}

func decodeModTime(n int64) time.Time {
	if n == zeroModTime {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// manifestDecoder reads the fields of an encoded manifest in order.
type manifestDecoder struct {
	b   []byte
	off int
}

func (d *manifestDecoder) uvarint(what string) (uint64, error) {
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		if n == 0 {
			return 0, malformedManifest("truncated %s", what)
		}
		return 0, malformedManifest("%s overflows 64 bits", what)
	}
	if n != uvarintLen(v) {
		return 0, malformedManifest("%s not in shortest form", what)
	}
	d.off += n
	return v, nil
}

func (d *manifestDecoder) varint(what string) (int64, error) {
	u, err := d.uvarint(what)
	if err != nil {
		return 0, err
	}
	// Zig-zag decoding, as binary.Varint does.
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v, nil
}

func (d *manifestDecoder) str(n int, what string) (string, error) {
	if len(d.b)-d.off < n {
		return "", malformedManifest("truncated %s", what)
	}
	s := string(d.b[d.off : d.off+n])
	d.off += n
	return s, nil
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
