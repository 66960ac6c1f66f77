package engine

import (
	"bytes"
	"fmt"
	"unicode/utf8"
)

// AutoChunker is the chunker name with which a user asks for a choice per
// file: the caller reads a sample, passes it to DetectContent and cuts with
// what ChooseChunker returns. It is not in the registry, and no manifest
// records it: a manifest records the chunker that was chosen.
const AutoChunker = "auto"

// DefaultCDC names the registered content-defined chunker that
// ChooseChunker picks. fastcdc, because on consecutive x/tools release tars
// its re-syncs at 256 KiB moved 1% fewer bytes than rabin's in sum (push
// and pull, two pairs; bench.BenchmarkResync) and it cuts 2.4 times as
// fast; rabin stays for compatibility with restic's cut points.
const DefaultCDC = "fastcdc"

// DetectSampleSize is how much of a file DetectContent looks at: callers
// pass the file's first DetectSampleSize bytes, or the whole file when it
// is shorter.
const DetectSampleSize = 256 << 10

const (
	// trialMinSaving is the least a trial compression must save for the
	// data to count as compressible; below it zstd costs CPU time on both
	// sides and saves next to nothing on the wire.
	trialMinSaving = 0.03
	// trialMinSample is the shortest sample worth a trial compression: on
	// fewer bytes the frame overhead hides what the data is like.
	trialMinSample = 4 << 10
)

// Content is what DetectContent found out about data from a sample.
type Content struct {
	// Kind names the format: "zip", "gzip", "zstd", "xz", "bzip2", "7z",
	// "rar", "lz4", "jpeg", "png", "gif", "webp", "mp4", "matroska" (also
	// WebM), "mp3", "ogg", "flac", "pdf", "sqlite", "qcow2", "vmdk" or
	// "tar" when magic bytes say so; otherwise "text" for UTF-8 with few
	// control characters, "binary" for anything else and "empty" for an
	// empty sample.
	Kind string
	// Compressed says the data is compressed already, so that zstd would
	// not shrink it.
	Compressed bool
	// Reason says in one line how Kind and Compressed were found, for
	// logs and --verbose output.
	Reason string
}

// magic recognizes a format by a signature at a fixed offset.
type magic struct {
	kind string
	off  int
	sig  string
	// compressed is true for formats whose data is always compressed;
	// for the others a trial compression decides.
	compressed bool
	// check, when set, must also hold: it rejects samples that merely
	// start like the format.
	check func(b []byte) bool
	// desc overrides the description of sig in Reason.
	desc string
}

// magics are tried in order; the first that matches wins.
var magics = []magic{
	{kind: "gzip", sig: "\x1f\x8b", compressed: true},
	{kind: "zstd", sig: "\x28\xb5\x2f\xfd", compressed: true},
	{kind: "xz", sig: "\xfd7zXZ\x00", compressed: true},
	{kind: "bzip2", sig: "BZh", compressed: true, check: func(b []byte) bool { return len(b) > 3 && b[3] >= '1' && b[3] <= '9' }},
	{kind: "7z", sig: "7z\xbc\xaf\x27\x1c", compressed: true},
	{kind: "rar", sig: "Rar!\x1a\x07", compressed: true},
	{kind: "lz4", sig: "\x04\x22\x4d\x18", compressed: true},
	{kind: "zip", sig: "PK\x03\x04", compressed: true},
	{kind: "jpeg", sig: "\xff\xd8\xff", compressed: true},
	{kind: "png", sig: "\x89PNG\r\n\x1a\n", compressed: true},
	{kind: "gif", sig: "GIF87a", compressed: true},
	{kind: "gif", sig: "GIF89a", compressed: true},
	{kind: "webp", off: 8, sig: "WEBP", compressed: true, check: func(b []byte) bool { return bytes.HasPrefix(b, []byte("RIFF")) }},
	{kind: "mp4", off: 4, sig: "ftyp", compressed: true},
	{kind: "matroska", sig: "\x1a\x45\xdf\xa3", compressed: true},
	{kind: "mp3", sig: "ID3", compressed: true},
	{kind: "mp3", sig: "\xff", compressed: true, check: isMPEGAudioFrame, desc: "an MPEG audio frame header"},
	{kind: "ogg", sig: "OggS", compressed: true},
	{kind: "flac", sig: "fLaC", compressed: true},
	{kind: "pdf", sig: "%PDF-"},
	{kind: "sqlite", sig: "SQLite format 3\x00"},
	{kind: "qcow2", sig: "QFI\xfb"},
	{kind: "vmdk", sig: "KDMV"},
	{kind: "tar", off: 257, sig: "ustar"},
}

// isMPEGAudioFrame reports whether b starts with a valid MPEG audio frame
// header: the 11-bit sync, then no reserved version, layer, bitrate or
// sample rate. Checking the fields lets random data pass for mp3 once in
// about 5000 samples rather than once in 2000.
func isMPEGAudioFrame(b []byte) bool {
	if len(b) < 4 || b[0] != 0xff || b[1]&0xe0 != 0xe0 {
		return false
	}
	version, layer := b[1]>>3&3, b[1]>>1&3
	bitrate, rate := b[2]>>4, b[2]>>2&3
	return version != 1 && layer != 0 && bitrate != 0xf && rate != 3
}

func (m *magic) matches(b []byte) bool {
	return len(b) >= m.off+len(m.sig) && string(b[m.off:m.off+len(m.sig)]) == m.sig && (m.check == nil || m.check(b))
}

func (m *magic) describe() string {
	if m.desc != "" {
		return m.desc
	}
	s := fmt.Sprintf("magic bytes % x", m.sig)
	if isPrintable(m.sig) {
		s = fmt.Sprintf("magic %q", m.sig)
	}
	if m.off > 0 {
		s += fmt.Sprintf(" at offset %d", m.off)
	}
	return s
}

func isPrintable(s string) bool {
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// DetectContent says what sample, the start of a file, holds and whether it
// is compressed already. Magic bytes decide first; for formats that may or
// may not be compressed, and for data no magic matches, a trial zstd
// compression of the first DetectSampleSize bytes decides: data it shrinks
// by less than 3% counts as compressed. A sample shorter than 4 KiB counts
// as compressible unless its magic says otherwise. DetectContent is safe for
// concurrent use; a trial costs about a millisecond.
func DetectContent(sample []byte) Content {
	sample = sample[:min(len(sample), DetectSampleSize)]
	if len(sample) == 0 {
		return Content{Kind: "empty", Reason: "empty sample"}
	}
	for i := range magics {
		m := &magics[i]
		if !m.matches(sample) {
			continue
		}
		reason := m.kind + " " + m.describe()
		if m.compressed {
			return Content{Kind: m.kind, Compressed: true, Reason: reason}
		}
		compressed, trial := trialCompress(sample)
		return Content{Kind: m.kind, Compressed: compressed, Reason: reason + "; " + trial}
	}
	kind := "binary"
	if isText(sample) {
		kind = "text"
	}
	compressed, trial := trialCompress(sample)
	return Content{Kind: kind, Compressed: compressed, Reason: "no magic bytes; " + trial}
}

// trialCompress compresses sample with the package's zstd encoder and says
// whether it saved too little to be worth it, and why.
func trialCompress(sample []byte) (compressed bool, reason string) {
	if len(sample) < trialMinSample {
		return false, fmt.Sprintf("a %d-byte sample is too short for a trial compression, assumed compressible", len(sample))
	}
	buf := getChunkData(int(MaxEncodedSize(CodecZstd, uint32(len(sample)))))
	defer ReleaseChunkData(buf)
	_, enc := Compress(buf[:0], sample)
	saved := 1 - float64(len(enc))/float64(len(sample))
	size := fmt.Sprintf("%d-byte", len(sample))
	if len(sample)%(1<<10) == 0 {
		size = fmt.Sprintf("%d KiB", len(sample)>>10)
	}
	return saved < trialMinSaving, fmt.Sprintf("trial zstd compression of a %s sample saved %.1f%%", size, 100*saved)
}

// isText reports whether b is UTF-8 (but for a rune cut off at its end)
// without NUL bytes and with at most 1% control characters other than
// tabs, line ends, form feeds and the escapes of coloured logs.
func isText(b []byte) bool {
	for cut := 0; cut < utf8.UTFMax && len(b) > 0 && !utf8.Valid(b); cut++ {
		b = b[:len(b)-1]
	}
	if !utf8.Valid(b) {
		return false
	}
	control := 0
	for _, c := range b {
		switch {
		case c == 0:
			return false
		case c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\f' && c != 0x1b:
			control++
		}
	}
	return control*100 <= len(b)
}

// ChooseChunker picks the chunker for data described by c and says why in
// one line: DefaultCDC at its defaults, whose boundaries survive insertions
// and deletions, for every kind of data. Data that is compressed already
// (archives, media, encrypted or random bytes) is sent uncompressed: the
// caller reads that from c.Compressed. Fixed-size chunks would save
// nothing there: an edit near the start of an archive or a disk image of
// encrypted blocks would move every later boundary, and a content-defined
// cut is cheap next to hashing.
func ChooseChunker(c Content) (ChunkerParams, string) {
	if c.Compressed {
		return registry[DefaultCDC].Defaults, fmt.Sprintf("%s content-defined chunks, sent uncompressed: %s data is compressed already", DefaultCDC, c.Kind)
	}
	return registry[DefaultCDC].Defaults, fmt.Sprintf("%s content-defined chunks, zstd-compressed: %s data compresses", DefaultCDC, c.Kind)
}
