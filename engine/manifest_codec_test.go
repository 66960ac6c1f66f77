package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testManifest builds a valid manifest of n chunks with seeded contents.
func testManifest(seed uint64, n int) *Manifest {
	rng := rand.New(rand.NewPCG(seed, 0))
	p := ChunkerParams{Name: "fixed", Min: 1 << 20, Avg: 1 << 20, Max: 1 << 20}
	m := &Manifest{
		Path:    "images/disk é.img",
		Mode:    0o640,
		ModTime: time.Unix(1700000000, 123456789).UTC(),
		Chunker: p,
	}
	for i := 0; i < n; i++ {
		var c ChunkRef
		for j := range c.ID {
			c.ID[j] = byte(rng.Uint32())
		}
		c.Size = p.Max
		if i == n-1 {
			c.Size = 1 + uint32(rng.IntN(int(p.Max)))
		}
		m.Chunks = append(m.Chunks, c)
		m.Size += int64(c.Size)
	}
	for j := range m.Digests.BLAKE3 {
		m.Digests.BLAKE3[j] = byte(rng.Uint32())
	}
	for j := range m.Digests.MD5 {
		m.Digests.MD5[j] = byte(rng.Uint32())
	}
	return m
}

func TestManifestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		m    *Manifest
	}{
		{"empty file", &Manifest{Path: "e", Chunker: defaultParams(t, "fixed"), ModTime: time.Unix(0, 0).UTC()}},
		{"zero mtime", &Manifest{Path: "z", Chunker: defaultParams(t, "fixed")}},
		{"negative mtime", &Manifest{Path: "n", Chunker: defaultParams(t, "fixed"), ModTime: time.Unix(-5, 7).UTC()}},
		{"one chunk", testManifest(1, 1)},
		{"many chunks", testManifest(2, 1000)},
		{"long path", func() *Manifest { m := testManifest(3, 2); m.Path = strings.Repeat("p", MaxPathLen); return m }()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.m.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			var got Manifest
			if err := got.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			if len(tt.m.Chunks) == 0 {
				got.Chunks = tt.m.Chunks // nil and empty are the same list
			}
			if !reflect.DeepEqual(&got, tt.m) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, *tt.m)
			}
		})
	}
}

// defaultParams returns the default parameters of a registered chunker.
func defaultParams(t testing.TB, name string) ChunkerParams {
	t.Helper()
	k, err := LookupChunker(name)
	if err != nil {
		t.Fatal(err)
	}
	return k.Defaults
}

// TestManifestGolden pins the version 1 encoding: a change to it must come
// with a new version number, not a silent change of format.
func TestManifestGolden(t *testing.T) {
	b, err := testManifest(42, 3).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "manifest_v1.golden", b)
}

func TestManifestUnmarshalRefuses(t *testing.T) {
	good, err := testManifest(7, 3).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// encode lays out a manifest field by field, bypassing Validate, so
	// that each case can break exactly one thing.
	type fields struct {
		path         string
		size         int64
		name         string
		min, avg, mx uint64
		count        uint64
		sizes        []uint64
		trailer      int
	}
	base := fields{path: "a", size: 3 << 20, name: "fixed", min: 1 << 20, avg: 1 << 20, mx: 1 << 20, count: 3, sizes: []uint64{1 << 20, 1 << 20, 1 << 20}, trailer: digestsLen}
	encode := func(f fields) []byte {
		b := []byte("CSM\x01")
		b = binary.AppendUvarint(b, uint64(len(f.path)))
		b = append(b, f.path...)
		b = binary.AppendVarint(b, f.size)
		b = binary.AppendUvarint(b, 0o644)
		b = binary.AppendVarint(b, 0)
		b = binary.AppendUvarint(b, uint64(len(f.name)))
		b = append(b, f.name...)
		b = binary.AppendUvarint(b, f.min)
		b = binary.AppendUvarint(b, f.avg)
		b = binary.AppendUvarint(b, f.mx)
		b = binary.AppendUvarint(b, 0)
		b = binary.AppendUvarint(b, f.count)
		for _, s := range f.sizes {
			b = append(b, make([]byte, 32)...)
			b = binary.AppendUvarint(b, s)
		}
		return append(b, make([]byte, f.trailer)...)
	}
	with := func(change func(*fields)) []byte {
		f := base
		f.sizes = append([]uint64(nil), base.sizes...)
		change(&f)
		return encode(f)
	}
	if err := new(Manifest).UnmarshalBinary(encode(base)); err != nil {
		t.Fatalf("base case refused: %v", err)
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "bad magic"},
		{"bad magic", append([]byte("CSX"), good[3:]...), "bad magic"},
		{"version 2", append([]byte("CSM\x02"), good[4:]...), "unsupported version 2"},
		{"truncated digests", good[:len(good)-1], "truncated"},
		{"truncated header", good[:6], "truncated"},
		{"trailing bytes", append(append([]byte(nil), good...), 0), "trailing"},
		{"empty path", with(func(f *fields) { f.path = "" }), "empty path"},
		{"long path", with(func(f *fields) { f.path = strings.Repeat("x", MaxPathLen+1) }), "exceeds 4096"},
		{"NUL in path", with(func(f *fields) { f.path = "a\x00b" }), "NUL"},
		{"bad UTF-8", with(func(f *fields) { f.path = "a\xffb" }), "UTF-8"},
		{"negative size", with(func(f *fields) { f.size = -1 }), "negative size"},
		{"unknown chunker", with(func(f *fields) { f.name = "nope" }), "unknown chunker"},
		{"bad params", with(func(f *fields) { f.min = 0 }), "min"},
		{"params over 32 bits", with(func(f *fields) { f.mx = 1 << 32 }), "32 bits"},
		{"huge count", with(func(f *fields) { f.count = MaxManifestChunks + 1 }), "exceeds"},
		{"count beyond input", with(func(f *fields) { f.count = 1000 }), "truncated"},
		{"zero-size chunk", with(func(f *fields) { f.sizes[1] = 0; f.size -= 1 << 20 }), "size 0"},
		{"chunk over max", with(func(f *fields) { f.sizes[2]++; f.size++ }), "outside"},
		{"sizes do not add up", with(func(f *fields) { f.size++ }), "add up"},
		{"non-minimal varint", func() []byte {
			b := with(func(f *fields) {})
			// The path length "1" written as 0x81 0x00.
			return append([]byte("CSM\x01\x81\x00"), b[5:]...)
		}(), "shortest form"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testManifest(9, 1)
			before := *m
			err := m.UnmarshalBinary(tt.in)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want an error wrapping ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
			if !reflect.DeepEqual(*m, before) {
				t.Error("refused input changed the manifest")
			}
		})
	}
}

func TestManifestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Manifest)
	}{
		{"empty path", func(m *Manifest) { m.Path = "" }},
		{"NUL in path", func(m *Manifest) { m.Path = "\x00" }},
		{"negative size", func(m *Manifest) { m.Size = -1 }},
		{"sizes do not add up", func(m *Manifest) { m.Size++ }},
		{"zero chunk", func(m *Manifest) { m.Chunks[0].Size = 0 }},
		{"params", func(m *Manifest) { m.Chunker.Max = MaxChunkSize + 1 }},
		{"mtime out of range", func(m *Manifest) { m.ModTime = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testManifest(5, 4)
			tt.change(m)
			if err := m.Validate(); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Validate = %v, want an error wrapping ErrMalformed", err)
			}
			if _, err := m.MarshalBinary(); !errors.Is(err, ErrMalformed) {
				t.Fatalf("MarshalBinary = %v, want an error wrapping ErrMalformed", err)
			}
		})
	}
}

func FuzzManifestUnmarshal(f *testing.F) {
	for i, n := range []int{0, 1, 5} {
		m := testManifest(uint64(i), n)
		if n == 0 {
			m.Size = 0
		}
		b, err := m.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	if b, err := os.ReadFile(filepath.Join("testdata", "manifest_v1.golden")); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var m Manifest
		if err := m.UnmarshalBinary(in); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("decoded manifest fails Validate: %v", err)
		}
		out, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if !bytes.Equal(out, in) {
			t.Fatalf("encoding is not canonical:\n in %x\nout %x", in, out)
		}
		var again Manifest
		if err := again.UnmarshalBinary(out); err != nil {
			t.Fatalf("decode re-encoded: %v", err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip differs:\n got %+v\nwant %+v", again, m)
		}
	})
}
