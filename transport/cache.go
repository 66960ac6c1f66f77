package transport

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/chunksync/chunksync/engine"
)

// A client remembers, per server identity and remote path, the manifest of
// the last version it pushed or fetched. A later push sends its chunk
// lists as deltas against that version, and a later pull asks for the new
// manifest as a delta against it, so that a re-sync costs bytes in
// proportion to what changed rather than to the file's size. The server
// checks the version's digests before it uses one as a base, so a stale
// cache costs bytes, never correctness.

// cacheMagic opens every cache file; the digit is the format version.
const cacheMagic = "CSC1"

// manifestCache is a directory of remembered manifests; the zero value
// remembers nothing.
type manifestCache struct{ dir string }

func (mc manifestCache) file(fp, path string) string {
	sum := sha256.Sum256([]byte(path))
	return filepath.Join(mc.dir, strings.TrimPrefix(fp, fingerprintP), hex.EncodeToString(sum[:]))
}

// load returns the remembered version of path on the server fp, or nil.
// A file that does not decode is as good as none.
func (mc manifestCache) load(fp, path string) (uint64, *engine.Manifest) {
	if mc.dir == "" || fp == "" {
		return 0, nil
	}
	b, err := os.ReadFile(mc.file(fp, path))
	if err != nil || !strings.HasPrefix(string(b), cacheMagic) {
		return 0, nil
	}
	n, k := binary.Uvarint(b[len(cacheMagic):])
	if k <= 0 || n == 0 {
		return 0, nil
	}
	m := new(engine.Manifest)
	if m.UnmarshalBinary(b[len(cacheMagic)+k:]) != nil || m.Path != path {
		return 0, nil
	}
	return n, m
}

// store remembers m as version n of its path on the server fp, replacing
// the file atomically. It is best effort: a cache that cannot be written
// costs bytes on the next re-sync, never correctness, so a failure does
// not fail the push or pull that succeeded.
func (mc manifestCache) store(fp string, n uint64, m *engine.Manifest) {
	if mc.dir == "" || fp == "" {
		return
	}
	mb, err := m.MarshalBinary()
	if err != nil {
		return
	}
	name := mc.file(fp, m.Path)
	if os.MkdirAll(filepath.Dir(name), 0o700) != nil {
		return
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	tmp := name + ".tmp-" + hex.EncodeToString(rnd[:])
	b := append(binary.AppendUvarint([]byte(cacheMagic), n), mb...)
	if os.WriteFile(tmp, b, 0o600) != nil || os.Rename(tmp, name) != nil {
		os.Remove(tmp)
	}
}

// baseCache keeps the base manifests a server decoded deltas against
// recently, so that the many missing requests of one push do not read the
// same manifest from the index each time. A version never changes while it
// exists, so an entry is never stale; it is bounded by chunk count.
type baseCache struct {
	mu     sync.Mutex
	chunks int
	order  []baseKey // oldest first
	m      map[baseKey]*engine.Manifest
}

type baseKey struct {
	path    string
	version uint64
}

// maxBaseChunks bounds the chunk refs all cached bases hold together,
// about 40 bytes each.
const maxBaseChunks = 4 << 20

// base returns version n of path from the cache or the index.
func (s *Server) base(ctx context.Context, path string, n uint64) (*engine.Manifest, error) {
	c := &s.bases
	k := baseKey{path, n}
	c.mu.Lock()
	m := c.m[k]
	c.mu.Unlock()
	if m != nil {
		return m, nil
	}
	_, m, err := s.db.Manifest(ctx, path, n)
	if err != nil {
		return nil, fmt.Errorf("base version %d of %s: %w", n, path, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[baseKey]*engine.Manifest)
	}
	if _, ok := c.m[k]; !ok && len(m.Chunks) <= maxBaseChunks {
		for c.chunks+len(m.Chunks) > maxBaseChunks {
			old := c.order[0]
			c.order = c.order[1:]
			c.chunks -= len(c.m[old].Chunks)
			delete(c.m, old)
		}
		c.m[k] = m
		c.order = append(c.order, k)
		c.chunks += len(m.Chunks)
	}
	return m, nil
}
