package engine

import (
	"fmt"
	"io/fs"
	"time"
)

// ChunkRef is one entry of a manifest's ordered chunk list.
type ChunkRef struct {
	ID   ChunkID
	Size uint32
}

// Digests are the whole-file digests of a version. BLAKE3 is the identity;
// MD5 is kept for tools that only know MD5 and is never trusted alone.
type Digests struct {
	BLAKE3 [32]byte
	MD5    [16]byte
}

// Manifest describes one version of a file: where it lives, how it was cut,
// the ordered chunks that make it up and the digests of the whole content.
type Manifest struct {
	Path    string
	Size    int64
	Mode    fs.FileMode
	ModTime time.Time
	Chunker ChunkerParams
	Chunks  []ChunkRef
	Digests Digests
}

// checkDigests compares the size and digests of content with m's.
func checkDigests(m *Manifest, size int64, got Digests) error {
	switch {
	case size != m.Size:
		return fmt.Errorf("%s: %w: %d bytes, manifest says %d", m.Path, ErrDigestMismatch, size, m.Size)
	case got.BLAKE3 != m.Digests.BLAKE3:
		return fmt.Errorf("%s: %w: BLAKE3 %x, manifest says %x", m.Path, ErrDigestMismatch, got.BLAKE3, m.Digests.BLAKE3)
	case got.MD5 != m.Digests.MD5:
		return fmt.Errorf("%s: %w: MD5 %x, manifest says %x", m.Path, ErrDigestMismatch, got.MD5, m.Digests.MD5)
	}
	return nil
}
