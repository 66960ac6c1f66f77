package engine

import (
	"context"
	"fmt"
	"os"
	"sort"
)

// DeltaUpload is an Upload to a remote that holds an earlier version of the
// file, the base, and takes the chunks it lacks as deltas against the base
// chunks they replaced (see EncodeDelta).
type DeltaUpload interface {
	Upload
	// Base returns the manifest of the base version, or nil when the
	// remote holds none.
	Base() *Manifest
	// Signature returns the signature (AppendSignature) of the base chunks
	// in spans, concatenated in order.
	Signature(ctx context.Context, spans []ChunkSpan) ([]byte, error)
	// SendDelta hands one delta to the remote, as Send hands a chunk: it
	// returns when the delta is queued and calls d.Release once the remote
	// has stored every chunk of d.Targets durably.
	SendDelta(ctx context.Context, d EncodedDelta) error
}

// EncodedDelta carries the chunks Targets, concatenated in order, as a
// delta against the base chunks Base, concatenated in order.
type EncodedDelta struct {
	Base    []ChunkSpan
	Targets []ChunkRef
	Payload []byte
	// Release, when not nil, is called exactly once, after the remote
	// stored every target.
	Release func()
}

const (
	// MaxDeltaTargets bounds the chunks one delta carries.
	MaxDeltaTargets = 4096
	// maxDeferredBytes bounds what a push holds back for deltas until its
	// scan ends: past it the change is no small edit of the base, so the
	// chunks go as they are, while the scan runs.
	maxDeferredBytes = 256 << 20
)

// deltaBundle is the chunks of one delta and the base they are made against.
type deltaBundle struct {
	base       []ChunkSpan
	baseBytes  int64
	targets    []ScannedChunk
	targetSize int64
}

// planDeltas groups the chunks of deferred, the chunks of m the remote
// lacks, into deltas against the base chunks they replaced (ReplacedBase),
// each within MaxDeltaSize, MaxDeltaBase and MaxDeltaTargets. Whole runs
// go together, so that a delta holds as much context as it may. Chunks with
// no base to speak of are returned in plain.
func planDeltas(base *Manifest, m *Manifest, deferred []ScannedChunk) (bundles []deltaBundle, plain []ScannedChunk) {
	byIndex := make(map[int]ScannedChunk, len(deferred))
	for _, c := range deferred {
		byIndex[c.Index] = c
	}
	oldOff := chunkOffsets(base.Chunks)
	var cur deltaBundle
	flush := func() {
		if len(cur.targets) > 0 {
			bundles = append(bundles, cur)
		}
		cur = deltaBundle{}
	}
	for _, r := range ReplacedBase(base.Chunks, m.Chunks) {
		baseBytes := oldOff[r.Old.End] - oldOff[r.Old.Start]
		var run []ScannedChunk
		for i := r.New.Start; i < r.New.End; i++ {
			if c, ok := byIndex[i]; ok {
				run = append(run, c)
				delete(byIndex, i)
			}
		}
		if len(run) == 0 {
			continue
		}
		if baseBytes == 0 {
			plain = append(plain, run...)
			continue
		}
		if cur.baseBytes+baseBytes > MaxDeltaBase {
			flush()
		}
		cur.base = append(cur.base, r.Old)
		cur.baseBytes += baseBytes
		for _, c := range run {
			if cur.targetSize+int64(c.Ref.Size) > MaxDeltaSize || len(cur.targets) == MaxDeltaTargets {
				// A run longer than one delta goes on in the next, against
				// the same base.
				flush()
				cur.base = []ChunkSpan{r.Old}
				cur.baseBytes = baseBytes
			}
			cur.targets = append(cur.targets, c)
			cur.targetSize += int64(c.Ref.Size)
		}
	}
	flush()
	for _, c := range byIndex {
		plain = append(plain, c)
	}
	sort.Slice(plain, func(i, j int) bool { return plain[i].Index < plain[j].Index })
	return bundles, plain
}

// sendDelta reads the targets of b from f, checks them, asks the remote for
// the signature of the base and sends the delta. When the remote cannot
// give the signature (the base is gone), it returns ok false and no error:
// the caller sends the targets as they are.
func sendDelta(ctx context.Context, up DeltaUpload, f *os.File, b deltaBundle, done func(chunks, raw, sent int64)) (ok bool, err error) {
	target := make([]byte, b.targetSize)
	refs := make([]ChunkRef, len(b.targets))
	off := 0
	for i, c := range b.targets {
		data := target[off : off+int(c.Ref.Size)]
		if _, err := f.ReadAt(data, c.Offset); err != nil {
			return false, fmt.Errorf("read chunk %d: %w", c.Index, err)
		}
		if SumChunk(data) != c.Ref.ID {
			return false, fmt.Errorf("%w: chunk %d at offset %d", ErrFileChanged, c.Index, c.Offset)
		}
		refs[i] = c.Ref
		off += len(data)
	}
	sig, err := up.Signature(ctx, b.base)
	if err != nil {
		return false, ctx.Err()
	}
	payload, err := EncodeDelta(nil, target, sig)
	if err != nil {
		return false, fmt.Errorf("delta of %d chunks: %w", len(refs), err)
	}
	sent := int64(len(payload))
	return true, up.SendDelta(ctx, EncodedDelta{
		Base: b.base, Targets: refs, Payload: payload,
		Release: func() { done(int64(len(refs)), b.targetSize, sent) },
	})
}
