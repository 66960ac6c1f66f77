package engine

import (
	"errors"
	"fmt"
)

// ErrChunkMismatch is matched (with errors.Is) by every MismatchError: chunk
// bytes that do not hash to the ID they were sent or stored under.
var ErrChunkMismatch = errors.New("chunk bytes do not match their ID")

// ErrMalformed is returned, wrapped with what was wrong, by every decoder in
// this package for input it refuses: a manifest, a delta or a compressed chunk.
var ErrMalformed = errors.New("malformed input")

// MismatchError says which chunk failed verification and what its bytes hash to.
type MismatchError struct {
	Want, Got ChunkID
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("chunk %s: bytes do not match their ID (they hash to %s)", e.Want, e.Got)
}

// Is makes errors.Is(err, ErrChunkMismatch) true.
func (e *MismatchError) Is(target error) bool { return target == ErrChunkMismatch }
