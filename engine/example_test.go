package engine_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/chunksync/chunksync/engine"
)

func ExampleScan() {
	p := engine.ChunkerParams{Name: "fixed", Min: 4, Avg: 4, Max: 4}
	m := &engine.Manifest{Path: "notes.txt", ModTime: time.Unix(1700000000, 0), Chunker: p}
	d, err := engine.Scan(context.Background(), strings.NewReader("hello, chunks"), p, func(c engine.ScannedChunk) error {
		fmt.Printf("chunk %d at %d: %q\n", c.Index, c.Offset, c.Data)
		m.Chunks = append(m.Chunks, c.Ref)
		m.Size += int64(c.Ref.Size)
		engine.ReleaseChunkData(c.Data)
		return nil
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	m.Digests = d
	fmt.Printf("md5 %x\n", d.MD5)
	fmt.Println("valid manifest:", m.Validate() == nil)
	// Output:
	// chunk 0 at 0: "hell"
	// chunk 1 at 4: "o, c"
	// chunk 2 at 8: "hunk"
	// chunk 3 at 12: "s"
	// md5 f510b42f38cbe663f209d7e9afe39766
	// valid manifest: true
}

func ExampleManifest_MarshalBinary() {
	k, _ := engine.LookupChunker("rabin")
	m := &engine.Manifest{Path: "empty", ModTime: time.Unix(0, 0), Chunker: k.Defaults}
	b, err := m.MarshalBinary()
	if err != nil {
		fmt.Println(err)
		return
	}
	var back engine.Manifest
	if err := back.UnmarshalBinary(b); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%d bytes, magic %q, version %d, path %q, chunker %s\n", len(b), b[:3], b[3], back.Path, back.Chunker)
	// A flipped byte in the magic is refused.
	b[0] = 'X'
	fmt.Println(back.UnmarshalBinary(b))
	// Output:
	// 86 bytes, magic "CSM", version 1, path "empty", chunker rabin(min=65536,avg=262144,max=2097152,poly=0x3b7592b25d5c9b)
	// malformed input: manifest: bad magic
}
