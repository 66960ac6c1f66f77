package engine

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// deltaRemote is a memRemote that remembers the manifest of every path and
// takes deltas against it.
type deltaRemote struct {
	*memRemote
	manifests map[string]*Manifest
	deltas    int
}

func (r *deltaRemote) OpenUpload(ctx context.Context, spec UploadSpec) (Upload, error) {
	return &deltaUpload{memUpload: memUpload{r: r.memRemote}, dr: r, base: r.manifests[spec.Path]}, nil
}

type deltaUpload struct {
	memUpload
	dr   *deltaRemote
	base *Manifest
}

func (u *deltaUpload) Base() *Manifest { return u.base }

func (u *deltaUpload) baseBytes(spans []ChunkSpan) ([]byte, error) {
	var b []byte
	for _, s := range spans {
		for _, ref := range u.base.Chunks[s.Start:s.End] {
			data, err := u.r.Get(context.Background(), ref.ID, nil)
			if err != nil {
				return nil, err
			}
			b = append(b, data...)
		}
	}
	return b, nil
}

func (u *deltaUpload) Signature(ctx context.Context, spans []ChunkSpan) ([]byte, error) {
	b, err := u.baseBytes(spans)
	if err != nil {
		return nil, err
	}
	return AppendSignature(nil, b)
}

func (u *deltaUpload) SendDelta(ctx context.Context, d EncodedDelta) error {
	base, err := u.baseBytes(d.Base)
	if err != nil {
		return err
	}
	var size uint32
	for _, t := range d.Targets {
		size += t.Size
	}
	target, err := DecodeDelta(nil, base, d.Payload, size)
	if err != nil {
		return err
	}
	u.r.mu.Lock()
	u.dr.deltas++
	for _, t := range d.Targets {
		if err := VerifyChunk(t.ID, target[:t.Size]); err != nil {
			u.r.mu.Unlock()
			return err
		}
		u.r.chunks[t.ID] = bytes.Clone(target[:t.Size])
		target = target[t.Size:]
	}
	u.r.mu.Unlock()
	d.Release()
	return nil
}

func (u *deltaUpload) Commit(ctx context.Context, m *Manifest) (CommitResult, error) {
	res, err := u.memUpload.Commit(ctx, m)
	if err == nil {
		u.dr.manifests[m.Path] = m
	}
	return res, err
}

func TestPushSendsDeltasAgainstTheBase(t *testing.T) {
	dir := t.TempDir()
	v1 := textData(4, 8<<20)
	v2 := bytes.Clone(v1)
	for _, off := range []int{100 << 10, 3 << 20, 6<<20 + 7} {
		copy(v2[off:], fmt.Sprintf("an edit at %d that is not in the old text", off))
	}
	v2 = append(v2[:5<<20], append([]byte("an insertion of a few words"), v2[5<<20:]...)...)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := ChunkerParams{Name: "fastcdc", Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}
	r := &deltaRemote{memRemote: newMemRemote(), manifests: map[string]*Manifest{}}
	if _, err := Push(t.Context(), r, write("v1", v1), "f", PushOptions{Chunker: p}); err != nil {
		t.Fatal(err)
	}
	if r.deltas != 0 {
		t.Fatalf("a push without a base sent %d deltas", r.deltas)
	}
	res, err := Push(t.Context(), r, write("v2", v2), "f", PushOptions{Chunker: p})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.files["f"], v2) {
		t.Fatal("assembled file differs")
	}
	plain, err := Push(t.Context(), &deltaRemote{memRemote: newMemRemote(), manifests: map[string]*Manifest{}}, write("v2b", v2), "f", PushOptions{Chunker: p})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("re-push of 4 edits: %d chunks, %d bytes as %d deltas; %d bytes raw, %d zstd-compressed alone",
		res.ChunksSent, res.BytesSent, r.deltas, res.RawBytesSent, plain.BytesSent*res.RawBytesSent/plain.RawBytesSent)
	if r.deltas == 0 || res.ChunksSent == 0 || res.BytesSent*20 > res.RawBytesSent {
		t.Errorf("re-push of 4 edits: %d chunks, %d bytes sent for %d raw in %d deltas", res.ChunksSent, res.BytesSent, res.RawBytesSent, r.deltas)
	}
}
