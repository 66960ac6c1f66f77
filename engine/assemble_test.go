package engine

import (
	"crypto/md5"
	"errors"
	"strings"
	"testing"

	"github.com/zeebo/blake3"
)

func refOf(b []byte) ChunkRef { return ChunkRef{ID: SumChunk(b), Size: uint32(len(b))} }

func manifestOf(whole []byte, chunks ...[]byte) *Manifest {
	m := &Manifest{Path: "x", Size: int64(len(whole))}
	for _, c := range chunks {
		m.Chunks = append(m.Chunks, refOf(c))
	}
	m.Digests.BLAKE3 = blake3.Sum256(whole)
	m.Digests.MD5 = md5.Sum(whole)
	return m
}

// An Assembly checks the content it wrote and the chunk list it was given
// against a manifest: the same content cut differently is not the
// manifest's, for the catalogue would then record chunks that were never
// assembled.
func TestAssemblyCheck(t *testing.T) {
	whole, left, right := []byte("abcdef"), []byte("abc"), []byte("def")
	var sb strings.Builder
	a := NewAssembly(&sb)
	for _, c := range [][]byte{left, right} {
		if err := a.Add(refOf(c), c); err != nil {
			t.Fatal(err)
		}
	}
	if sb.String() != string(whole) || a.Chunks() != 2 {
		t.Fatalf("wrote %q in %d chunks", sb.String(), a.Chunks())
	}
	if err := a.Check(manifestOf(whole, left, right)); err != nil {
		t.Fatalf("the manifest of what was assembled: %v", err)
	}
	for name, m := range map[string]*Manifest{
		"cut differently":  manifestOf(whole, whole),
		"in another order": manifestOf(whole, right, left),
		"one chunk more":   manifestOf(whole, left, right, right),
		"other content":    manifestOf([]byte("abcdeg"), left, []byte("deg")),
	} {
		if err := a.Check(m); !errors.Is(err, ErrDigestMismatch) {
			t.Errorf("%s: %v, want a digest mismatch", name, err)
		}
	}
	if err := a.Add(refOf(left), right[:2]); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("a chunk of the wrong size: %v", err)
	}
}
