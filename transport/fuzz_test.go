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
		if h.RawSize == 0 || h.RawSize > engine.MaxChunkSize || h.PayloadLen == 0 ||
			int64(h.PayloadLen) > engine.MaxEncodedSize(h.Codec, h.RawSize) ||
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
