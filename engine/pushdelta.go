package engine

import (
	"context"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sync/errgroup"
)

// DeltaUpload is an Upload to a remote that holds an earlier version of the
// file, the base, and takes the chunks it lacks as deltas against the base
// chunks they replaced (see EncodeDelta).
type DeltaUpload interface {
	Upload
	// Base returns the manifest of the base version, or nil when the
	// remote holds none; it is known once the session is open (see
	// Upload.ID).
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

// deltaBundle is the chunks of one delta and the base they are made
// against: targets indexes the new chunk list, base spans the old one.
type deltaBundle struct {
	base       []ChunkSpan
	baseBytes  int64
	targets    []int
	targetSize int64
}

// planDeltas groups the chunks lacked, indices into new that the receiver
// lacks, into deltas against the chunks of old they replaced
// (ReplacedBase), each within maxTarget (at most MaxDeltaSize), MaxDeltaBase and
// MaxDeltaTargets. Whole runs go together, so that a delta holds as much
// context as it may. The chunks with no base to speak of are returned in
// plain, in order.
func planDeltas(old, new []ChunkRef, lacked []int, maxTarget int64) (bundles []deltaBundle, plain []int) {
	want := make(map[int]bool, len(lacked))
	for _, i := range lacked {
		want[i] = true
	}
	oldOff := chunkOffsets(old)
	var cur deltaBundle
	flush := func() {
		if len(cur.targets) > 0 {
			bundles = append(bundles, cur)
		}
		cur = deltaBundle{}
	}
	for _, r := range ReplacedBase(old, new) {
		baseBytes := oldOff[r.Old.End] - oldOff[r.Old.Start]
		var run []int
		for i := r.New.Start; i < r.New.End; i++ {
			if want[i] {
				run = append(run, i)
				delete(want, i)
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
		for _, i := range run {
			size := int64(new[i].Size)
			if cur.targetSize+size > maxTarget || len(cur.targets) == MaxDeltaTargets {
				// A run longer than one delta goes on in the next, against
				// the same base.
				flush()
				cur.base = []ChunkSpan{r.Old}
				cur.baseBytes = baseBytes
			}
			cur.targets = append(cur.targets, i)
			cur.targetSize += size
		}
	}
	flush()
	for i := range want {
		plain = append(plain, i)
	}
	slices.Sort(plain)
	return bundles, plain
}

// deltaPartBytes is the least target a delta part is made of: a bundle
// with more is encoded in parts on several goroutines, each part against
// the whole base, with one signature for all.
const deltaPartBytes = 1 << 20

// sendDelta reads chunks, the targets of b in order, from f, checks them,
// asks the remote for the signature of the base and sends the delta, in up
// to parts parts made at once. When the remote cannot give the signature
// (the base is gone), it returns ok false and no error: the caller sends
// the targets as they are.
func sendDelta(ctx context.Context, up DeltaUpload, f *os.File, chunks []ScannedChunk, b deltaBundle, parts int, done func(chunks, raw, sent int64)) (ok bool, err error) {
	target := make([]byte, b.targetSize)
	refs := make([]ChunkRef, len(b.targets))
	off := 0
	for i, c := range chunks {
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
	g, gctx := errgroup.WithContext(ctx)
	refOff := chunkOffsets(refs)
	for _, sp := range splitTargets(refs, parts) {
		partRefs, part := refs[sp.Start:sp.End], target[refOff[sp.Start]:refOff[sp.End]]
		g.Go(func() error {
			payload, err := EncodeDelta(nil, part, sig)
			if err != nil {
				return fmt.Errorf("delta of %d chunks: %w", len(partRefs), err)
			}
			sent := int64(len(payload))
			return up.SendDelta(gctx, EncodedDelta{
				Base: b.base, Targets: partRefs, Payload: payload,
				Release: func() { done(int64(len(partRefs)), int64(len(part)), sent) },
			})
		})
	}
	return true, g.Wait()
}

// splitTargets cuts the targets of a delta, refs, into at most parts spans
// of about equal bytes, none below deltaPartBytes but the only one, to be
// made (against the same base) on several cores at once.
func splitTargets(refs []ChunkRef, parts int) []ChunkSpan {
	off := chunkOffsets(refs)
	total := off[len(refs)]
	parts = max(1, min(parts, int(total/deltaPartBytes)))
	spans := make([]ChunkSpan, 0, parts)
	start := 0
	for k := 1; k <= parts && start < len(refs); k++ {
		end := start + 1
		for end < len(refs) && (k == parts || off[end] < total*int64(k)/int64(parts)) {
			end++
		}
		spans = append(spans, ChunkSpan{start, end})
		start = end
	}
	return spans
}
