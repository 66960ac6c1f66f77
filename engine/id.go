package engine

import (
	"encoding/hex"
	"fmt"

	"github.com/zeebo/blake3"
)

// ChunkID names a chunk: the BLAKE3-256 hash of its uncompressed bytes.
type ChunkID [32]byte

// SumChunk returns the ID of a chunk with the given raw bytes.
func SumChunk(data []byte) ChunkID {
	return ChunkID(blake3.Sum256(data))
}

// String returns the ID in lower-case hexadecimal.
func (id ChunkID) String() string { return hex.EncodeToString(id[:]) }

// ParseChunkID parses the hexadecimal form that String returns.
func ParseChunkID(s string) (ChunkID, error) {
	var id ChunkID
	if len(s) != 2*len(id) {
		return id, fmt.Errorf("parse chunk id %q: want %d hex digits, got %d", s, 2*len(id), len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("parse chunk id %q: %w", s, err)
	}
	return id, nil
}

// VerifyChunk reports ErrChunkMismatch when data does not hash to id.
func VerifyChunk(id ChunkID, data []byte) error {
	if got := SumChunk(data); got != id {
		return &MismatchError{Want: id, Got: got}
	}
	return nil
}
