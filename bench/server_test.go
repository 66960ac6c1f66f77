package bench

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/chunksync/chunksync/transport"
)

// testServer is a chunksync server on loopback for the tests that push
// and pull through it.
type testServer struct {
	srv   *transport.Server
	token string
	files string
}

func startTestServer(tb testing.TB) *testServer {
	tb.Helper()
	dir := tb.TempDir()
	token, err := transport.NewToken(dir, "bench")
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := transport.NewServer(transport.ServerConfig{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ctx) })
	tb.Cleanup(func() {
		cancel()
		wg.Wait()
		srv.Close()
	})
	return &testServer{srv: srv, token: token, files: filepath.Join(dir, "files")}
}

// client dials a new client that remembers manifests in cache, so that
// every measured run pays its own handshake.
func (s *testServer) client(tb testing.TB, cache string) *transport.Client {
	tb.Helper()
	c, err := transport.Dial(context.Background(), transport.ClientConfig{
		Addr: s.srv.Addr().String(), Token: s.token, Fingerprint: s.srv.Fingerprint(), CacheDir: cache,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}
