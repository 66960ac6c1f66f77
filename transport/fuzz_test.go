package transport

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

func FuzzDecodeHello(f *testing.F) {
	f.Add(hello{Version: 1, Token: "cs_token"}.encode())
	f.Add([]byte("CSYN"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHello(b)
		if err != nil {
			return
		}
		h2, err := decodeHello(h.encode())
		if err != nil || h2 != h {
			t.Fatalf("round trip: %+v → %+v, %v", h, h2, err)
		}
	})
}

func FuzzDecodeMissingRequest(f *testing.F) {
	refs := []engine.ChunkRef{{ID: engine.SumChunk(nil), Size: 10}}
	f.Add(missingRequest{Session: "s", First: 3, Refs: refs}.encode(nil))
	f.Add(missingRequest{Session: "s", First: 3, Base: 2, Refs: refs}.encode(refs))
	f.Add([]byte{1, 's', 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeMissingRequest(b)
		if err != nil {
			return
		}
		if r.Base != 0 {
			// The refs come from the delta once the server has the base;
			// the request itself only carries the delta's bytes.
			r.Refs = nil
		}
		r2, err := decodeMissingRequest(r.encode(nil))
		if err != nil || len(r2.Refs) != len(r.Refs) || r2.Session != r.Session || r2.First != r.First || r2.Base != r.Base {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzDecodeBitmap(f *testing.F) {
	f.Add(encodeBitmap([]bool{true, false, true}), 3)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		if n < 0 || n > maxMissingRefs {
			return
		}
		m, err := decodeBitmap(b, n)
		if err == nil && len(m) != n {
			t.Fatalf("bitmap of %d for %d chunks", len(m), n)
		}
	})
}

func FuzzDecodeChunkHeader(f *testing.F) {
	bound := uint32(engine.MaxEncodedSize(engine.CodecZstd, engine.MaxChunkSize))
	for _, h := range []chunkHeader{
		{Codec: engine.CodecZstd, RawSize: 100, PayloadLen: 50},
		{Codec: engine.CodecZstd, RawSize: engine.MaxChunkSize, PayloadLen: bound},
		{Codec: engine.CodecZstd, RawSize: engine.MaxChunkSize, PayloadLen: bound + 1},
		{Codec: engine.CodecRaw, RawSize: 100, PayloadLen: 100},
		{Codec: engine.CodecRaw, RawSize: 100, PayloadLen: 101},
		{Codec: codecDelta, RawSize: engine.MaxChunkSize, PayloadLen: uint32(maxDeltaPayload(engine.MaxChunkSize))},
		{Codec: codecDelta, RawSize: engine.MaxChunkSize, PayloadLen: uint32(maxDeltaPayload(engine.MaxChunkSize)) + 1},
	} {
		b := make([]byte, chunkHeaderLen)
		h.put(b)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) != chunkHeaderLen {
			return
		}
		h, err := decodeChunkHeader(b)
		if err != nil {
			return
		}
		limit := engine.MaxEncodedSize(h.Codec, h.RawSize)
		if h.Codec == codecDelta {
			limit = maxDeltaPayload(h.RawSize)
		}
		if h.RawSize == 0 || h.RawSize > engine.MaxChunkSize || h.PayloadLen == 0 || int64(h.PayloadLen) > limit ||
			h.Codec == engine.CodecRaw && h.PayloadLen != h.RawSize {
			t.Fatalf("accepted header %+v", h)
		}
	})
}

func FuzzDecodeProgress(f *testing.F) {
	e := enc{}
	encodeProgress(&e, sampleProgress())
	f.Add(e.b)
	f.Fuzz(func(t *testing.T, b []byte) {
		d := dec{b: b}
		decodeProgress(&d)
		d.end()
	})
}

func FuzzReadAck(f *testing.F) {
	f.Add(encodeAck(engine.SumChunk(nil), statusOK, ""))
	f.Add(encodeAck(engine.SumChunk(nil), statusMismatch, "no"))
	f.Fuzz(func(t *testing.T, b []byte) {
		readAck(bytes.NewReader(b))
	})
}

func sampleProgress() index.SessionProgress {
	var sp index.SessionProgress
	sp.ID = "0123456789abcdef"
	sp.Spec = engine.UploadSpec{Path: "a/b", Size: 10, Mode: 0o644, ModTime: time.Unix(1, 2), Chunker: engine.ChunkerParams{Name: "fixed", Min: 1, Avg: 1, Max: 1}}
	sp.Chunks, sp.Bytes, sp.ChunksStored, sp.BytesStored = 3, 10, 1, 4
	return sp
}

func FuzzParseTokens(f *testing.F) {
	f.Add(appendTokenLine(nil, tokenEntry{hash: tokenHash("cs_a"), name: "alice"}))
	f.Add([]byte("zz 1\n\n" + strings.Repeat("ab", 40) + " long\r\n" + strings.Repeat("0", 64) + " a b\n" + strings.Repeat("f", 64) + "\tlast"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, e := range parseTokens(data) {
			if e.name == "" || strings.IndexFunc(e.name, unicode.IsSpace) >= 0 {
				t.Fatalf("parsed name %q is not one word", e.name)
			}
			if got := parseTokens(appendTokenLine(nil, e)); len(got) != 1 || got[0] != e {
				t.Fatalf("%+v does not read back: %+v", e, got)
			}
		}
	})
}

func FuzzDecodeVersions(f *testing.F) {
	v := index.Version{Path: "a/b", Number: 3, Created: time.Unix(0, 42), Size: 10,
		Chunker: engine.ChunkerParams{Name: "fastcdc", Min: 64, Avg: 256, Max: 1024}}
	f.Add(encodeVersions([]index.Version{v, v}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		list, err := decodeVersions(b)
		if err != nil {
			return
		}
		again, err := decodeVersions(encodeVersions(list))
		if err != nil || len(again) != len(list) {
			t.Fatalf("round trip: %d versions, %v", len(again), err)
		}
	})
}

func FuzzDecodeFetchRequest(f *testing.F) {
	f.Add(encodeFetchRequest([]engine.ChunkRef{{ID: engine.SumChunk(nil), Size: 1}}))
	f.Add([]byte{0xff, 0xff, 0x03})
	f.Fuzz(func(t *testing.T, b []byte) {
		ids, err := decodeFetchRequest(b)
		if err == nil && len(ids) > maxFetchRefs {
			t.Fatalf("%d ids above the limit %d", len(ids), maxFetchRefs)
		}
	})
}

// FuzzDecodeManifestMessage decodes a manifest as commits and manifest
// replies carry it, in full or as a delta against a base.
func FuzzDecodeManifestMessage(f *testing.F) {
	p := engine.ChunkerParams{Name: "fixed", Min: 4, Avg: 4, Max: 4}
	a, b := engine.SumChunk([]byte("aaaa")), engine.SumChunk([]byte("bbbb"))
	base := &engine.Manifest{Path: "f", Size: 8, Chunker: p, Chunks: []engine.ChunkRef{{ID: a, Size: 4}, {ID: a, Size: 4}}}
	m := &engine.Manifest{Path: "f", Size: 12, Chunker: p, Chunks: []engine.ChunkRef{{ID: a, Size: 4}, {ID: b, Size: 4}, {ID: a, Size: 4}}}
	for _, n := range []uint64{0, 1} {
		e := enc{}
		if err := encodeManifest(&e, m, n, base); err != nil {
			f.Fatal(err)
		}
		f.Add(e.b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d := dec{b: data}
		got, err := decodeManifest(&d, func(path string, n, _ uint64) (*engine.Manifest, error) { return base, nil })
		if err != nil {
			return
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("decoded manifest does not validate: %v", err)
		}
	})
}

// FuzzDecodeDeltaBundle decodes what precedes the delta in a delta entry:
// the base version, spans of a base of 8 chunks, and the targets.
func FuzzDecodeDeltaBundle(f *testing.F) {
	e := enc{}
	e.uvarint(2)
	encodeSpans(&e, []engine.ChunkSpan{{Start: 1, End: 3}, {Start: 5, End: 8}})
	encodeRefs(&e, []engine.ChunkRef{{ID: engine.SumChunk(nil), Size: 7}})
	f.Add(e.b)
	f.Add([]byte{1, 1, 7, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		d := dec{b: b}
		d.uvarint("base version")
		spans := decodeSpans(&d, 8)
		targets := decodeRefs(&d, engine.MaxDeltaTargets)
		if d.err != nil {
			return
		}
		for _, sp := range spans {
			if sp.Start < 0 || sp.End > 8 || sp.Len() < 1 {
				t.Fatalf("span %+v outside a base of 8", sp)
			}
		}
		for _, r := range targets {
			if r.Size == 0 || r.Size > engine.MaxChunkSize {
				t.Fatalf("target of %d bytes", r.Size)
			}
		}
	})
}

func FuzzDecodeHelloReply(f *testing.F) {
	f.Add(helloReply{Version: 1, MaxChunkSize: 16 << 20, MaxStreams: 64}.encode())
	f.Add(helloReply{Version: 2, MaxChunkSize: 16 << 20, MaxStreams: 64, FECPort: 4434}.encode())
	f.Add([]byte{0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHelloReply(b)
		if err != nil {
			return
		}
		h2, err := decodeHelloReply(h.encode())
		if err != nil || h2 != h {
			t.Fatalf("round trip: %+v → %+v, %v", h, h2, err)
		}
	})
}

func FuzzDecodePathLoss(f *testing.F) {
	f.Add(pathLoss{PacketsSent: 1000, PacketsReceived: 500, PacketsLost: 10, MinRTT: 20 * time.Millisecond, SmoothedRTT: 21 * time.Millisecond}.encode())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodePathLoss(b)
		if err != nil {
			return
		}
		p2, err := decodePathLoss(p.encode())
		if err != nil || p2 != p {
			t.Fatalf("round trip: %+v → %+v, %v", p, p2, err)
		}
	})
}
