package bench

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/chunksync/chunksync/transport"
)

func TestRawQUICBaseline(t *testing.T) {
	cert, err := transport.LoadIdentity(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sink, err := ListenRawQUIC("127.0.0.1:0", cert)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { sink.Serve(ctx) })
	defer wg.Wait()
	defer cancel()
	// The sink confirms the byte count, so a short transfer fails.
	if _, err := SendRawQUIC(ctx, sink.Addr().String(), 3<<20+17, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
}

func TestWriteRandomFileIsSeeded(t *testing.T) {
	dir := t.TempDir()
	read := func(name string, seed uint64) []byte {
		p := filepath.Join(dir, name)
		if err := WriteRandomFile(p, 3<<20+5, seed); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b, c := read("a", 1), read("b", 1), read("c", 2)
	if len(a) != 3<<20+5 || !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatal("WriteRandomFile is not a seeded function of its arguments")
	}
}
