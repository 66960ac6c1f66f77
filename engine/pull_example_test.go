package engine_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/chunksync/chunksync/engine"
)

// mapFetcher serves chunks from a map, one at a time.
type mapFetcher map[engine.ChunkID][]byte

func (f mapFetcher) Fetch(ctx context.Context, refs []engine.ChunkRef, got func(engine.ChunkRef, []byte) error) error {
	for _, ref := range refs {
		data, ok := f[ref.ID]
		if !ok {
			return fmt.Errorf("chunk %s: not found", ref.ID)
		}
		if err := got(ref, data); err != nil {
			return err
		}
	}
	return nil
}

func ExamplePull() {
	ctx := context.Background()
	// The server's version and its chunks.
	p := engine.ChunkerParams{Name: "fixed", Min: 4, Avg: 4, Max: 4}
	m := &engine.Manifest{Path: "notes.txt", Mode: 0o644, ModTime: time.Unix(1700000000, 0), Chunker: p}
	server := mapFetcher{}
	d, err := engine.Scan(ctx, strings.NewReader("hello, chunks"), p, func(c engine.ScannedChunk) error {
		server[c.Ref.ID] = bytes.Clone(c.Data)
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

	// The local copy lacks the last byte.
	dir, err := os.MkdirTemp("", "chunksync-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	local := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(local, []byte("hello, chunk"), 0o600); err != nil {
		fmt.Println(err)
		return
	}
	res, err := engine.Pull(ctx, server, m, local, engine.PullOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	got, _ := os.ReadFile(local)
	fmt.Printf("%q: reused %d chunks (%d bytes), fetched %d (%d bytes)\n", got, res.ChunksReused, res.BytesReused, res.ChunksFetched, res.BytesFetched)
	// Output:
	// "hello, chunks": reused 3 chunks (12 bytes), fetched 1 (1 bytes)
}
