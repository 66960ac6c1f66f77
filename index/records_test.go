package index

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
)

var (
	fuzzSessionKey = bytes.Repeat([]byte{0x5e}, sessionIDLen)
	testSession    = Session{
		Owner:   "alice",
		Created: time.Unix(1700000000, 5).UTC(),
		Updated: time.Unix(1700000100, 999999999).UTC(),
		Spec: engine.UploadSpec{
			Path: "vm/disk.img", Size: 1 << 40, Mode: 0o644, ModTime: time.Unix(-5, 7).UTC(),
			Chunker: engine.ChunkerParams{Name: "rabin", Min: 1, Avg: 2, Max: 3, Poly: 0x3DA3358B4DC173},
		},
	}
	testVersion = Version{
		Path: "a/b", Number: 7, Created: time.Unix(1700000000, 0).UTC(), Size: 12345,
		Digests: engine.Digests{BLAKE3: [32]byte{1, 2, 3}, MD5: [16]byte{4, 5}},
		Chunker: engine.ChunkerParams{Name: "fixed", Min: 4096, Avg: 4096, Max: 4096},
	}
)

// TestRecordsRefuseMalformed checks each decoder against damaged forms of a
// valid record and that the error names the record and key.
func TestRecordsRefuseMalformed(t *testing.T) {
	chunk := encodeChunkRecord(nil, ChunkInfo{Size: 100, Stored: 50, Codec: engine.CodecZstd})
	session := encodeSessionRecord(nil, testSession)
	ref := encodeSessionRefRecord(nil, engine.ChunkRef{ID: engine.ChunkID{1}, Size: 9})
	version := encodeVersionRecord(nil, testVersion, []byte("manifest"))
	refKey := sessionRefKey(fuzzSessionKey, 3)
	vkey := versionKey(testVersion.Path, testVersion.Number)

	decoders := map[string]struct {
		kind   string
		key    []byte
		val    []byte
		decode func(key, val []byte) error
	}{
		"chunk":   {"chunk", []byte{0xc1}, chunk, func(k, v []byte) error { _, err := decodeChunkRecord(k, v); return err }},
		"session": {"session", fuzzSessionKey, session, func(k, v []byte) error { _, err := decodeSessionRecord(k, v); return err }},
		"ref":     {"session chunk", refKey, ref, func(k, v []byte) error { _, err := decodeSessionRefRecord(k, v); return err }},
		"version": {"version", vkey, version, func(k, v []byte) error { _, _, err := decodeVersionRecord(k, v); return err }},
	}
	for name, d := range decoders {
		t.Run(name, func(t *testing.T) {
			if err := d.decode(d.key, d.val); err != nil {
				t.Fatalf("valid record refused: %v", err)
			}
			bad := map[string][]byte{
				"empty":         {},
				"other version": append([]byte{recordVersion + 1}, d.val[1:]...),
			}
			if name != "version" { // a version record ends in the manifest, of any length
				bad["trailing byte"] = append(bytes.Clone(d.val), 0)
				bad["truncated"] = d.val[:len(d.val)-1]
			} else {
				bad["no manifest"] = d.val[:len(d.val)-len("manifest")]
			}
			for what, val := range bad {
				err := d.decode(d.key, val)
				if !errors.Is(err, ErrCorruptRecord) {
					t.Errorf("%s: got %v, want ErrCorruptRecord", what, err)
					continue
				}
				if want := d.kind + " record " + hexString(d.key); !strings.Contains(err.Error(), want) {
					t.Errorf("%s: error %q does not name %q", what, err, want)
				}
			}
		})
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	var sb strings.Builder
	for _, c := range b {
		sb.WriteByte(digits[c>>4])
		sb.WriteByte(digits[c&15])
	}
	return sb.String()
}

func TestRecordsRefuseBadFields(t *testing.T) {
	cases := map[string]error{}
	chunk := func(ci ChunkInfo) error {
		v := encodeChunkRecord(nil, ci)
		_, err := decodeChunkRecord([]byte{1}, v)
		return err
	}
	cases["chunk codec"] = chunk(ChunkInfo{Codec: 5})
	cases["chunk size"] = chunk(ChunkInfo{Size: engine.MaxChunkSize + 1, Codec: engine.CodecZstd})
	cases["raw chunk stored larger"] = chunk(ChunkInfo{Size: 10, Stored: 11})
	session := func(edit func(*Session)) error {
		s := testSession
		edit(&s)
		_, err := decodeSessionRecord(fuzzSessionKey, encodeSessionRecord(nil, s))
		return err
	}
	cases["session negative size"] = session(func(s *Session) { s.Spec.Size = -1 })
	cases["session empty path"] = session(func(s *Session) { s.Spec.Path = "" })
	cases["session path with NUL"] = session(func(s *Session) { s.Spec.Path = "a\x00" })
	cases["session owner not UTF-8"] = session(func(s *Session) { s.Owner = "\xff" })
	nsec := encodeSessionRecord(nil, testSession)
	copy(nsec[1+2+5+8:], []byte{0x3b, 0x9a, 0xca, 0x00}) // created nanoseconds = 1e9
	_, cases["session nanoseconds"] = decodeSessionRecord(fuzzSessionKey, nsec)
	_, cases["session short key"] = decodeSessionRecord(fuzzSessionKey[1:], encodeSessionRecord(nil, testSession))
	_, cases["ref size"] = decodeSessionRefRecord(sessionRefKey(fuzzSessionKey, 0), encodeSessionRefRecord(nil, engine.ChunkRef{Size: engine.MaxChunkSize + 1}))
	vrec := encodeVersionRecord(nil, testVersion, []byte("m"))
	_, _, cases["version number 0"] = decodeVersionRecord(versionKey("a", 0), vrec)
	_, _, cases["version key without NUL"] = decodeVersionRecord([]byte("abcdefghijk"), vrec)
	_, _, cases["version key NUL in path"] = decodeVersionRecord(versionKey("a\x00b", 1), vrec)
	neg := testVersion
	neg.Size = -1
	_, _, cases["version negative size"] = decodeVersionRecord(versionKey("a", 1), encodeVersionRecord(nil, neg, []byte("m")))
	_, cases["spec index value"] = decodeSessionSpecIndex([]byte{1}, []byte{1, 2})
	for name, err := range cases {
		if !errors.Is(err, ErrCorruptRecord) {
			t.Errorf("%s: got %v, want ErrCorruptRecord", name, err)
		}
	}
}

func FuzzChunkRecord(f *testing.F) {
	f.Add(encodeChunkRecord(nil, ChunkInfo{Size: 100, Stored: 50, Codec: engine.CodecZstd}))
	f.Add(encodeChunkRecord(nil, ChunkInfo{Size: engine.MaxChunkSize, Stored: engine.MaxChunkSize}))
	f.Add([]byte{1, 2, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, val []byte) {
		info, err := decodeChunkRecord([]byte{1}, val)
		if err != nil {
			return
		}
		if enc := encodeChunkRecord(nil, info); !bytes.Equal(enc, val) {
			t.Fatalf("%x decodes to %+v, which encodes to %x", val, info, enc)
		}
	})
}

func FuzzSessionRecord(f *testing.F) {
	f.Add(encodeSessionRecord(nil, testSession))
	f.Add(encodeSessionRecord(nil, Session{Spec: engine.UploadSpec{Path: "x"}}))
	f.Add([]byte{1, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, val []byte) {
		s, err := decodeSessionRecord(fuzzSessionKey, val)
		if err != nil {
			return
		}
		if enc := encodeSessionRecord(nil, s); !bytes.Equal(enc, val) {
			t.Fatalf("%x decodes to %+v, which encodes to %x", val, s, enc)
		}
		if s.ID != formatSessionID(fuzzSessionKey) {
			t.Fatalf("session ID %q, want the key's", s.ID)
		}
	})
}

func FuzzSessionRefRecord(f *testing.F) {
	f.Add(encodeSessionRefRecord(nil, engine.ChunkRef{ID: engine.ChunkID{1, 2}, Size: 1 << 20}))
	f.Add(bytes.Repeat([]byte{1}, sessionRefRecordLen))
	f.Fuzz(func(t *testing.T, val []byte) {
		ref, err := decodeSessionRefRecord(sessionRefKey(fuzzSessionKey, 1), val)
		if err != nil {
			return
		}
		if enc := encodeSessionRefRecord(nil, ref); !bytes.Equal(enc, val) {
			t.Fatalf("%x decodes to %+v, which encodes to %x", val, ref, enc)
		}
	})
}

func FuzzSessionSpecIndex(f *testing.F) {
	f.Add(fuzzSessionKey)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, val []byte) {
		sid, err := decodeSessionSpecIndex([]byte{1}, val)
		if err == nil && !bytes.Equal(sid, val) {
			t.Fatalf("%x decodes to %x", val, sid)
		}
	})
}

func FuzzVersionRecord(f *testing.F) {
	m := &engine.Manifest{Path: "a/b", Size: 1, Chunker: testVersion.Chunker, Chunks: []engine.ChunkRef{{Size: 1}}}
	data, err := m.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(versionKey(testVersion.Path, testVersion.Number), encodeVersionRecord(nil, testVersion, data))
	f.Add(versionKey("x", 1), []byte{1})
	f.Add([]byte("\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"), encodeVersionRecord(nil, Version{}, []byte{0}))
	f.Fuzz(func(t *testing.T, key, val []byte) {
		v, manifest, err := decodeVersionRecord(key, val)
		if err != nil {
			return
		}
		if enc := versionKey(v.Path, v.Number); !bytes.Equal(enc, key) {
			t.Fatalf("key %x decodes to %q version %d, which encodes to %x", key, v.Path, v.Number, enc)
		}
		if enc := encodeVersionRecord(nil, v, manifest); !bytes.Equal(enc, val) {
			t.Fatalf("%x decodes to %+v, which encodes to %x", val, v, enc)
		}
		// What Manifest does next must not panic either.
		var m engine.Manifest
		_ = m.UnmarshalBinary(manifest)
	})
}
