package engine

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

// randomRefs returns n refs with IDs drawn from a pool of distinct chunks.
func randomRefs(r *rand.Rand, n int) []ChunkRef {
	refs := make([]ChunkRef, n)
	for i := range refs {
		var id ChunkID
		for j := range id {
			id[j] = byte(r.Uint32())
		}
		refs[i] = ChunkRef{ID: id, Size: 1 + r.Uint32N(1<<20)}
	}
	return refs
}

func TestChunkListDeltaRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := randomRefs(r, 1000)
	fresh := randomRefs(r, 50)
	edited := slices.Clone(base)
	edited[10] = fresh[0]                              // in-place change
	edited = slices.Insert(edited, 500, fresh[1:4]...) // insertion
	edited = slices.Delete(edited, 700, 720)           // deletion
	edited = append(edited, base[100:110]...)          // a moved run
	cases := map[string]struct {
		base, refs []ChunkRef
		maxLen     int
	}{
		"unchanged":  {base, base, 8},
		"edited":     {base, edited, 4*37 + 64},
		"no base":    {nil, base, 1000*37 + 16},
		"empty":      {base, nil, 1},
		"both empty": {nil, nil, 1},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			b := AppendChunkListDelta(nil, c.base, c.refs)
			if len(b) > c.maxLen {
				t.Errorf("delta of %d bytes, want at most %d", len(b), c.maxLen)
			}
			got, listed, err := DecodeChunkListDelta(b, c.base)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.refs) {
				t.Fatalf("decoded list differs from the encoded one")
			}
			in := make(map[ChunkRef]bool)
			for _, ref := range c.base {
				in[ref] = true
			}
			for i, l := range listed {
				if l == in[got[i]] {
					t.Errorf("chunk %d: listed %v, in base %v", i, l, in[got[i]])
				}
			}
		})
	}
}

func TestChunkListDeltaRefusesMalformed(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	base := randomRefs(r, 10)
	good := AppendChunkListDelta(nil, base, append(slices.Clone(base[2:5]), randomRefs(r, 2)...))
	cases := map[string][]byte{
		"empty":            {},
		"huge count":       {0xff, 0xff, 0xff, 0xff, 0x0f},
		"count above ops":  {5, 2 << 1, 0},
		"copy past base":   {3, 3 << 1, 9 * 2},
		"copy before base": {1, 1 << 1, 1},
		"zero run":         {1, 0},
		"literal cut":      {1, 1<<1 | 1, 1, 2, 3},
		"bad size":         append(append([]byte{1, 1<<1 | 1}, make([]byte, 32)...), 0),
		"trailing":         append(slices.Clone(good), 0),
		"truncated":        good[:len(good)-1],
	}
	for name, b := range cases {
		if _, _, err := DecodeChunkListDelta(b, base); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
}

func FuzzDecodeChunkListDelta(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 6))
	base := randomRefs(r, 8)
	f.Add(AppendChunkListDelta(nil, base, base))
	f.Add(AppendChunkListDelta(nil, base, append(randomRefs(r, 2), base[3:]...)))
	f.Fuzz(func(t *testing.T, b []byte) {
		refs, listed, err := DecodeChunkListDelta(b, base)
		if err != nil {
			return
		}
		if len(refs) != len(listed) {
			t.Fatalf("%d refs, %d flags", len(refs), len(listed))
		}
		again, _, err := DecodeChunkListDelta(AppendChunkListDelta(nil, base, refs), base)
		if err != nil || !slices.Equal(again, refs) {
			t.Fatalf("re-encoding a decoded delta: %v", err)
		}
	})
}
