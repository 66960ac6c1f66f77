package engine

import (
	"fmt"
	"strings"
	"testing"
)

func TestDetectContentMagic(t *testing.T) {
	random := randomData(70, 64<<10)
	text := textData(71, 64<<10)
	zeros := make([]byte, 64<<10)
	with := func(head string, rest []byte) []byte { return append([]byte(head), rest...) }
	tarOf := func(body []byte) []byte {
		hdr := make([]byte, 512)
		copy(hdr, "notes.txt")
		copy(hdr[257:], "ustar\x0000")
		return append(hdr, body...)
	}
	tests := []struct {
		name       string
		sample     []byte
		kind       string
		compressed bool
	}{
		{"gzip", with("\x1f\x8b\x08\x00", random), "gzip", true},
		{"zstd", with("\x28\xb5\x2f\xfd", random), "zstd", true},
		{"xz", with("\xfd7zXZ\x00", random), "xz", true},
		{"bzip2", with("BZh9", random), "bzip2", true},
		{"7z", with("7z\xbc\xaf\x27\x1c", random), "7z", true},
		{"rar", with("Rar!\x1a\x07\x01\x00", random), "rar", true},
		{"lz4", with("\x04\x22\x4d\x18", random), "lz4", true},
		{"zip", with("PK\x03\x04\x14\x00", random), "zip", true},
		{"jpeg", with("\xff\xd8\xff\xe0\x00\x10JFIF", random), "jpeg", true},
		{"png", with("\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", random), "png", true},
		{"gif87a", with("GIF87a", random), "gif", true},
		{"gif89a", with("GIF89a", random), "gif", true},
		{"webp", with("RIFF\x24\x00\x01\x00WEBPVP8 ", random), "webp", true},
		{"mp4", with("\x00\x00\x00\x20ftypisom", random), "mp4", true},
		{"matroska", with("\x1a\x45\xdf\xa3\x9f\x42\x86\x81", random), "matroska", true},
		{"mp3 with ID3 tag", with("ID3\x04\x00\x00", random), "mp3", true},
		{"mp3 frame", with("\xff\xfb\x90\x44", random), "mp3", true},
		{"ogg", with("OggS\x00\x02", random), "ogg", true},
		{"flac", with("fLaC\x00\x00\x00\x22", random), "flac", true},
		// Formats that may hold either kind of data: a trial decides.
		{"pdf of text", with("%PDF-1.7\n", text), "pdf", false},
		{"pdf of compressed streams", with("%PDF-1.7\n", random), "pdf", true},
		{"sqlite", with("SQLite format 3\x00", text), "sqlite", false},
		{"qcow2", with("QFI\xfb\x00\x00\x00\x03", zeros), "qcow2", false},
		{"qcow2 of compressed clusters", with("QFI\xfb\x00\x00\x00\x03", random), "qcow2", true},
		{"vmdk", with("KDMV\x01\x00\x00\x00", zeros), "vmdk", false},
		{"tar of text", tarOf(text), "tar", false},
		{"tar of archives", tarOf(random), "tar", true},
		// Near misses.
		{"RIFF that is not webp", with("RIFF\x24\x00\x01\x00WAVEfmt ", text), "binary", false},
		{"BZh without a block size", with("BZhx", text), "text", false},
		{"ff without a valid frame header", with("\xff\xff\xff\xff", text), "binary", false},
	}
	kinds := map[string]bool{}
	for _, tt := range tests {
		kinds[tt.kind] = true
		t.Run(tt.name, func(t *testing.T) {
			c := DetectContent(tt.sample)
			if c.Kind != tt.kind || c.Compressed != tt.compressed {
				t.Fatalf("got %+v, want kind %s, compressed %v", c, tt.kind, tt.compressed)
			}
			if !strings.HasPrefix(c.Reason, tt.kind+" ") && tt.kind != "binary" && tt.kind != "text" {
				t.Errorf("reason %q does not start with the kind", c.Reason)
			}
			if strings.Contains(c.Reason, "\n") {
				t.Errorf("reason %q is more than one line", c.Reason)
			}
		})
	}
	for _, m := range magics {
		if !kinds[m.kind] {
			t.Errorf("no test for magic %s", m.kind)
		}
	}
}

func TestDetectContentReasons(t *testing.T) {
	tests := []struct {
		name   string
		sample []byte
		want   Content
	}{
		{"gzip", []byte("\x1f\x8b\x08"), Content{"gzip", true, "gzip magic bytes 1f 8b"}},
		{"tar", append(make([]byte, 257), "ustar\x0000"...), Content{"tar", false,
			`tar magic "ustar" at offset 257; a 265-byte sample is too short for a trial compression, assumed compressible`}},
		{"mp3 frame", []byte("\xff\xfb\x90\x44"), Content{"mp3", true, "mp3 an MPEG audio frame header"}},
		{"empty", nil, Content{"empty", false, "empty sample"}},
		{"random", randomData(72, 1<<20), Content{"binary", true, "no magic bytes; trial zstd compression of a 256 KiB sample saved 0.0%"}},
		{"zeros", make([]byte, 100<<10), Content{"binary", false, "no magic bytes; trial zstd compression of a 100 KiB sample saved 100.0%"}},
		{"short text", []byte("hello, chunks\n"), Content{"text", false, "no magic bytes; a 14-byte sample is too short for a trial compression, assumed compressible"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DetectContent(tt.sample); got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestDetectContentText(t *testing.T) {
	tests := []struct {
		name       string
		sample     []byte
		kind       string
		compressed bool
	}{
		{"word salad", textData(73, 1<<20), "text", false},
		{"utf-8 cut in a rune", []byte(strings.Repeat("chunks über alles ", 1000)[:17999]), "text", false},
		{"coloured log", []byte(strings.Repeat("\x1b[32mok\x1b[0m pushed 1 file in 2s to the server\n", 500)), "text", false},
		{"latin-1", []byte(strings.Repeat("chunks \xfcber alles ", 1000)), "binary", false},
		{"text with NUL", append(textData(74, 64<<10), 0), "binary", false},
		{"short random", randomData(75, 100), "binary", false},
		{"random", randomData(76, 8<<10), "binary", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DetectContent(tt.sample)
			if c.Kind != tt.kind || c.Compressed != tt.compressed {
				t.Fatalf("got %+v, want kind %s, compressed %v", c, tt.kind, tt.compressed)
			}
		})
	}
}

func TestChooseChunker(t *testing.T) {
	if _, err := LookupChunker(AutoChunker); err == nil {
		t.Errorf("%q is registered as a chunker; manifests must record what it chose", AutoChunker)
	}
	cdc, err := LookupChunker(DefaultCDC)
	if err != nil {
		t.Fatalf("DefaultCDC: %v", err)
	}
	tests := []struct {
		name   string
		sample []byte
		want   ChunkerParams
	}{
		{"jpeg", append([]byte("\xff\xd8\xff\xe0"), randomData(77, 1<<20)...), cdc.Defaults},
		{"random", randomData(78, 1<<20), cdc.Defaults},
		{"text", textData(79, 1<<20), cdc.Defaults},
		{"zeros", make([]byte, 1<<20), cdc.Defaults},
		{"empty", nil, cdc.Defaults},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DetectContent(tt.sample)
			p, why := ChooseChunker(c)
			if p != tt.want {
				t.Errorf("ChooseChunker(%+v) = %s, want %s", c, p, tt.want)
			}
			if err := ValidateParams(p); err != nil {
				t.Error(err)
			}
			if !strings.Contains(why, c.Kind) || !strings.Contains(why, p.Name) || strings.Contains(why, "\n") {
				t.Errorf("reason %q does not name the kind %s and the chunker %s on one line", why, c.Kind, p.Name)
			}
			if strings.Contains(why, "uncompressed") != c.Compressed {
				t.Errorf("reason %q for data compressed already: %v", why, c.Compressed)
			}
		})
	}
}

func ExampleChooseChunker() {
	c := DetectContent([]byte("\x1f\x8b\x08\x00 and the rest of a gzip stream"))
	p, why := ChooseChunker(c)
	fmt.Println(c.Reason)
	fmt.Println(p)
	fmt.Println(why)
	// Output:
	// gzip magic bytes 1f 8b
	// fastcdc(min=65536,avg=262144,max=1048576)
	// fastcdc content-defined chunks, sent uncompressed: gzip data is compressed already
}
