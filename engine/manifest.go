package engine

import (
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
