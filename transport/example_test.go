package transport_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// A server on a loopback port, a client that pins its identity, and a push
// that is repeated: the second time no chunk travels.
func Example() {
	dir, err := os.MkdirTemp("", "chunksync-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	data := filepath.Join(dir, "data")
	token, err := transport.NewToken(data, "example")
	if err != nil {
		log.Fatal(err)
	}
	srv, err := transport.NewServer(transport.ServerConfig{DataDir: data, Listen: "127.0.0.1:0"})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	defer func() { stop(); <-served; srv.Close() }()

	c, err := transport.Dial(ctx, transport.ClientConfig{Addr: srv.Addr().String(), Token: token, Fingerprint: srv.Fingerprint()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	local := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(local, []byte("chunksync sends only what the server lacks\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	rabin, err := engine.LookupChunker("rabin")
	if err != nil {
		log.Fatal(err)
	}
	for range 2 {
		res, err := engine.Push(ctx, c, local, "docs/notes.txt", engine.PushOptions{Chunker: rabin.Defaults})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("version %d: %d of %d chunks sent\n", res.Version, res.ChunksSent, len(res.Manifest.Chunks))
	}
	got, err := os.ReadFile(filepath.Join(data, "files", "docs", "notes.txt"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(got))
	// Output:
	// version 1: 1 of 1 chunks sent
	// version 2: 0 of 1 chunks sent
	// chunksync sends only what the server lacks
}
