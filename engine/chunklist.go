package engine

import (
	"encoding/binary"
	"fmt"
)

// A chunk list delta describes a manifest's chunk list as edits of another
// one, the base, that both ends hold: runs of chunks copied from the base
// and chunks listed in full. A re-sync of a file that changed a little
// sends a few bytes per changed region instead of 33 or more per chunk.
//
//	count   uvarint        chunks in the list
//	ops     until count chunks are described:
//	  tag   uvarint        n<<1 | kind, n ≥ 1
//	  kind 0 (copy)        start varint: base index of the run's first chunk,
//	                       minus the index after the previous copy run
//	  kind 1 (literal)     n × (32-byte ID, size uvarint)

const (
	deltaCopy    = 0
	deltaLiteral = 1
)

// AppendChunkListDelta appends the delta that turns base into refs to dst.
// It copies every chunk it finds in base, preferring to extend the current
// run, so an unchanged region costs one op however long it is.
func AppendChunkListDelta(dst []byte, base, refs []ChunkRef) []byte {
	first := make(map[ChunkID]int, len(base))
	for i := len(base) - 1; i >= 0; i-- {
		first[base[i].ID] = i
	}
	dst = binary.AppendUvarint(dst, uint64(len(refs)))
	next := 0 // base index after the previous copy run
	for i := 0; i < len(refs); {
		start, ok := first[refs[i].ID]
		if ok && base[start].Size != refs[i].Size {
			ok = false
		}
		if next < len(base) && base[next] == refs[i] {
			start, ok = next, true
		}
		if ok {
			n := 1
			for i+n < len(refs) && start+n < len(base) && base[start+n] == refs[i+n] {
				n++
			}
			dst = binary.AppendUvarint(dst, uint64(n)<<1|deltaCopy)
			dst = binary.AppendVarint(dst, int64(start-next))
			next = start + n
			i += n
			continue
		}
		n := 1
		for i+n < len(refs) {
			if _, in := first[refs[i+n].ID]; in {
				break
			}
			n++
		}
		dst = binary.AppendUvarint(dst, uint64(n)<<1|deltaLiteral)
		for _, r := range refs[i : i+n] {
			dst = append(dst, r.ID[:]...)
			dst = binary.AppendUvarint(dst, uint64(r.Size))
		}
		i += n
	}
	return dst
}

// DecodeChunkListDelta applies the delta b to base. It returns the chunk
// list and, for each entry, whether the delta listed it in full rather than
// copying it from base. It refuses, with an error wrapping ErrMalformed,
// anything AppendChunkListDelta would not write: runs outside base, counts
// above MaxManifestChunks or the bytes left, chunk sizes outside
// 1..MaxChunkSize, trailing bytes.
func DecodeChunkListDelta(b []byte, base []ChunkRef) (refs []ChunkRef, listed []bool, err error) {
	fail := func(format string, args ...any) ([]ChunkRef, []bool, error) {
		return nil, nil, fmt.Errorf("%w: chunk list delta: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
	count, n := binary.Uvarint(b)
	if n <= 0 {
		return fail("bad count")
	}
	b = b[n:]
	if count > MaxManifestChunks {
		return fail("%d chunks exceed %d", count, MaxManifestChunks)
	}
	// Every op takes at least two bytes and describes at least one chunk,
	// so the list is never allocated larger than the input justifies
	// unless copy runs make it so, and those are bounded by base.
	if count > uint64(len(base))+uint64(len(b)) {
		return fail("%d chunks from %d base chunks and %d bytes", count, len(base), len(b))
	}
	refs = make([]ChunkRef, 0, count)
	listed = make([]bool, 0, count)
	next := 0
	for uint64(len(refs)) < count {
		tag, n := binary.Uvarint(b)
		if n <= 0 {
			return fail("bad op")
		}
		b = b[n:]
		run := tag >> 1
		if run == 0 || run > count-uint64(len(refs)) {
			return fail("run of %d chunks with %d left", run, count-uint64(len(refs)))
		}
		switch tag & 1 {
		case deltaCopy:
			d, n := binary.Varint(b)
			if n <= 0 {
				return fail("bad copy start")
			}
			b = b[n:]
			start := int64(next) + d
			if start < 0 || start > int64(len(base)) || uint64(len(base))-uint64(start) < run {
				return fail("copy of %d chunks from %d outside a base of %d", run, start, len(base))
			}
			refs = append(refs, base[start:start+int64(run)]...)
			for range run {
				listed = append(listed, false)
			}
			next = int(start) + int(run)
		case deltaLiteral:
			if run > uint64(len(b))/uint64(len(ChunkID{})+1) {
				return fail("%d listed chunks in %d bytes", run, len(b))
			}
			for range run {
				var r ChunkRef
				if len(b) < len(r.ID)+1 {
					return fail("listed chunk cut short")
				}
				copy(r.ID[:], b)
				b = b[len(r.ID):]
				size, n := binary.Uvarint(b)
				if n <= 0 || size == 0 || size > MaxChunkSize {
					return fail("chunk %s: bad size", r.ID)
				}
				b = b[n:]
				r.Size = uint32(size)
				refs = append(refs, r)
				listed = append(listed, true)
			}
		}
	}
	if len(b) != 0 {
		return fail("%d trailing bytes", len(b))
	}
	return refs, listed, nil
}
