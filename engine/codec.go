package engine

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Codec says how a chunk's bytes are encoded on the wire and in the store.
type Codec uint8

const (
	// CodecRaw is the chunk's bytes as they are.
	CodecRaw Codec = 0
	// CodecZstd is one zstd frame holding the chunk's bytes.
	CodecZstd Codec = 1
)

func (c Codec) String() string {
	switch c {
	case CodecRaw:
		return "raw"
	case CodecZstd:
		return "zstd"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// MaxEncodedSize is the largest payload that may hold a chunk of rawSize
// bytes encoded with c: rawSize for CodecRaw, rawSize + rawSize/128 + 1024
// for CodecZstd, and -1, which no payload fits, for an unknown codec. The
// server refuses a larger payload before reading it, and the store refuses
// to keep or read one, so that a payload padded with skippable frames
// (which decode to nothing) cannot make either hold more than this.
//
// The zstd bound is a compressor's worst case with slack to spare. Data
// that does not compress goes into raw blocks of at most 128 KiB or the
// window size, which is at least 1 KiB: 3 bytes of header per block, plus at
// most 18 bytes of frame header and 4 of checksum, so a compressor that
// fills its blocks adds at most 3 bytes per KiB and 25 more.
// klauspost/compress's Encoder.MaxEncodedSize (3 bytes per block and the
// headers) and libzstd's ZSTD_compressBound (rawSize + rawSize/256 + at
// most 64) both stay below it, and Compress never picks zstd for a payload
// that is not smaller than rawSize. Stores have enforced this bound on the
// chunks they hold from the start: lowering it would make stored chunks
// unreadable.
func MaxEncodedSize(c Codec, rawSize uint32) int64 {
	switch c {
	case CodecRaw:
		return int64(rawSize)
	case CodecZstd:
		return int64(rawSize) + int64(rawSize/128) + 1024
	}
	return -1
}

// zstdCodec holds the one encoder and decoder of the process; both are safe
// for concurrent EncodeAll and DecodeAll calls.
var zstdCodec = sync.OnceValues(func() (*zstd.Encoder, *zstd.Decoder) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderCRC(false), // the chunk ID already covers the content
		zstd.WithWindowSize(1<<22),
	)
	if err != nil {
		panic("engine: zstd encoder with constant options: " + err.Error())
	}
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(MaxChunkSize),
		// DecodeAll never grows dst beyond its capacity: a frame that
		// expands past the chunk size it claims fails instead of allocating.
		zstd.WithDecodeAllCapLimit(true),
	)
	if err != nil {
		panic("engine: zstd decoder with constant options: " + err.Error())
	}
	return enc, dec
})

// Compress appends the encoded form of src to dst and says which codec it
// used: zstd when that is smaller, raw otherwise.
func Compress(dst, src []byte) (Codec, []byte) {
	enc, _ := zstdCodec()
	start := len(dst)
	out := enc.EncodeAll(src, dst)
	if len(out)-start < len(src) {
		return CodecZstd, out
	}
	return CodecRaw, append(out[:start], src...)
}

// Decompress appends the raw bytes of payload to dst[:0]. It refuses, with an
// error wrapping ErrMalformed, a payload that does not decode to exactly
// rawSize bytes, without ever holding more than rawSize bytes of output.
func Decompress(dst []byte, c Codec, payload []byte, rawSize int) ([]byte, error) {
	if rawSize < 0 || rawSize > MaxChunkSize {
		return nil, fmt.Errorf("%w: chunk size %d outside 0..%d", ErrMalformed, rawSize, MaxChunkSize)
	}
	switch c {
	case CodecRaw:
		if len(payload) != rawSize {
			return nil, fmt.Errorf("%w: raw chunk of %d bytes claims %d", ErrMalformed, len(payload), rawSize)
		}
		return append(dst[:0], payload...), nil
	case CodecZstd:
		_, dec := zstdCodec()
		if cap(dst) < rawSize {
			dst = make([]byte, 0, rawSize)
		}
		out, err := dec.DecodeAll(payload, dst[:0:rawSize])
		if err != nil {
			return nil, fmt.Errorf("%w: zstd chunk: %v", ErrMalformed, err)
		}
		if len(out) != rawSize {
			return nil, fmt.Errorf("%w: zstd chunk decodes to %d bytes, claims %d", ErrMalformed, len(out), rawSize)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: unknown codec %d", ErrMalformed, uint8(c))
}
