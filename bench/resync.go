package bench

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/chunksync/chunksync/engine"
)

// ResyncStrategy is one way to re-sync a file that changed: how it is cut
// into the chunks the index and the manifests list, and how the bytes of
// the chunks the other end lacks travel.
type ResyncStrategy struct {
	// Chunker cuts the file into the chunks of the manifest and index.
	Chunker engine.ChunkerParams
	// SubChunkSize, HashLen and Level are the delta's parameters (see
	// engine.WithSubChunkSize, engine.WithSignatureHashLen and
	// engine.WithDeltaLevel); a Level of 0 leaves the level to the
	// engine.
	SubChunkSize, HashLen, Level int
	// Batch makes all runs of changed chunks of the file one delta
	// against all their bases, instead of one delta per run.
	Batch bool
}

// String names the strategy in a form fit for a benchmark name, for
// example "fastcdc-16K-sub256-hash4-zstdauto-batch".
func (s ResyncStrategy) String() string {
	level, unit := "auto", "run"
	if s.Level != 0 {
		level = fmt.Sprint(s.Level)
	}
	if s.Batch {
		unit = "batch"
	}
	return fmt.Sprintf("%s-%dK-sub%d-hash%d-zstd%s-%s", s.Chunker.Name, s.Chunker.Avg>>10, s.SubChunkSize, s.HashLen, level, unit)
}

func (s ResyncStrategy) deltaOptions() []engine.DeltaOption {
	opts := []engine.DeltaOption{engine.WithSubChunkSize(s.SubChunkSize), engine.WithSignatureHashLen(s.HashLen)}
	if s.Level != 0 {
		opts = append(opts, engine.WithDeltaLevel(s.Level))
	}
	return opts
}

// ResyncCost is what a re-sync of a file from its old to its new version
// carries, in bytes of protocol messages (QUIC's own framing, about 1%, not
// counted), and what the strategy costs to store.
//
// The messages: the new manifest as its header and an
// engine.AppendChunkListDelta against the old chunk list; the receiver's
// answer, one bit per listed chunk, whether it lacks it; then per delta (a
// run of lacked chunks, or all of them with Batch) a signature of its base
// going back and the delta going forth, each with a uvarint of the run's
// first chunk and of the length (and for a delta, of the target's size).
type ResyncCost struct {
	// Manifest is the new manifest's header and chunk list delta.
	Manifest int
	// Answer is the receiver's bitmap of the listed chunks it lacks.
	Answer int
	// Signatures are the signatures of the bases, receiver to sender.
	Signatures int
	// Deltas are the deltas against the signatures, sender to receiver.
	Deltas int
	// FromBase are the deltas of a sender that has the old version: it
	// makes the signatures itself, with hashes of
	// engine.MaxSignatureHashLen bytes, and sends none.
	FromBase int
	// Plain are the lacked chunks compressed one by one with
	// engine.Compress, as the protocol sends them without deltas, each with
	// a uvarint of its length.
	Plain int
	// Chunks and Lacked count the new version's chunks and those the
	// receiver lacks; Runs counts the deltas.
	Chunks, Lacked, Runs int
	// LackedBytes and BaseBytes are the raw bytes of the lacked chunks
	// and of the bases they are deltas against.
	LackedBytes, BaseBytes int64
	// StoreOverhead is the bytes that the manifest entries and the index
	// keep per byte of the new version (StoredEntryBytes per chunk), in
	// percent.
	StoreOverhead float64
	// Encode is the time taken by the signatures and deltas.
	Encode time.Duration
}

// StoredEntryBytes is what a chunk costs to store besides its bytes: about
// 36 in a manifest (ID and size) and 50 in the index.
const StoredEntryBytes = 36 + 50

// Push is the bytes of a re-sync whose sender lacks the old version: a
// push, or a pull from a server that no longer keeps it.
func (c ResyncCost) Push() int { return c.Manifest + c.Answer + c.Signatures + c.Deltas }

// Pull is the bytes of a re-sync whose sender has the old version: a pull
// from a server that keeps it. The receiver needs no answer: the sender
// knows what it has.
func (c ResyncCost) Pull() int { return c.Manifest + c.FromBase }

// PlainTotal is the bytes of a re-sync without deltas.
func (c ResyncCost) PlainTotal() int { return c.Manifest + c.Answer + c.Plain }

// EstimateResync computes, without a network, what re-syncing old to new
// with s carries. It checks every delta by decoding it.
func EstimateResync(old, new []byte, s ResyncStrategy) (ResyncCost, error) {
	opts := s.deltaOptions()
	oldRefs, oldOff, err := cutChunks(old, s.Chunker)
	if err != nil {
		return ResyncCost{}, err
	}
	newRefs, newOff, err := cutChunks(new, s.Chunker)
	if err != nil {
		return ResyncCost{}, err
	}
	var c ResyncCost
	c.Chunks = len(newRefs)
	c.StoreOverhead = 100 * float64(len(newRefs)*StoredEntryBytes) / float64(len(new))

	header := engine.Manifest{Path: "golang.org_x_tools.tar", Size: 0, Mode: 0o644, ModTime: tarModTime, Chunker: s.Chunker}
	h, err := header.MarshalBinary()
	if err != nil {
		return ResyncCost{}, err
	}
	// The header of an empty manifest, with the chunk count and size of
	// the empty one replaced by the chunk list delta and the real size.
	c.Manifest = len(h) - 2 + len(binary.AppendVarint(nil, int64(len(new)))) + len(engine.AppendChunkListDelta(nil, oldRefs, newRefs))

	reps := engine.ReplacedBase(oldRefs, newRefs)
	for _, r := range reps {
		c.Lacked += r.New.Len()
		for i := r.New.Start; i < r.New.End; i++ {
			data := new[newOff[i]:newOff[i+1]]
			c.LackedBytes += int64(len(data))
			_, z := engine.Compress(nil, data)
			c.Plain += uvarintLen(uint64(len(z))) + len(z)
		}
	}
	c.Answer = (c.Lacked + 7) / 8

	// A delta's target and base, and the first new chunk it starts at.
	type job struct {
		first        int
		target, base []byte
	}
	var jobs []job
	for _, r := range reps {
		j := job{first: r.New.Start, target: new[newOff[r.New.Start]:newOff[r.New.End]], base: old[oldOff[r.Old.Start]:oldOff[r.Old.End]]}
		last := len(jobs) - 1
		if s.Batch && last >= 0 && len(jobs[last].target)+len(j.target) <= engine.MaxDeltaSize && len(jobs[last].base)+len(j.base) <= engine.MaxDeltaBase {
			jobs[last].target = append(jobs[last].target, j.target...)
			jobs[last].base = append(jobs[last].base, j.base...)
			continue
		}
		if s.Batch {
			j.target, j.base = bytes.Clone(j.target), bytes.Clone(j.base)
		}
		jobs = append(jobs, j)
	}
	c.Runs = len(jobs)
	start := time.Now()
	long := append(opts[:len(opts):len(opts)], engine.WithSignatureHashLen(engine.MaxSignatureHashLen))
	var sig, delta, out []byte
	for _, j := range jobs {
		c.BaseBytes += int64(len(j.base))
		if sig, err = engine.AppendSignature(sig[:0], j.base, opts...); err != nil {
			return ResyncCost{}, err
		}
		if delta, err = engine.EncodeDelta(delta[:0], j.target, sig, opts...); err != nil {
			return ResyncCost{}, err
		}
		if out, err = engine.DecodeDelta(out, j.base, delta, uint32(len(j.target))); err != nil || !bytes.Equal(out, j.target) {
			return ResyncCost{}, fmt.Errorf("delta of the run at chunk %d does not decode to its target (%v)", j.first, err)
		}
		c.Signatures += uvarintLen(uint64(j.first)) + uvarintLen(uint64(len(sig))) + len(sig)
		c.Deltas += uvarintLen(uint64(j.first)) + uvarintLen(uint64(len(j.target))) + uvarintLen(uint64(len(delta))) + len(delta)
		if sig, err = engine.AppendSignature(sig[:0], j.base, long...); err != nil {
			return ResyncCost{}, err
		}
		if delta, err = engine.EncodeDelta(delta[:0], j.target, sig, long...); err != nil {
			return ResyncCost{}, err
		}
		if out, err = engine.DecodeDelta(out, j.base, delta, uint32(len(j.target))); err != nil || !bytes.Equal(out, j.target) {
			return ResyncCost{}, fmt.Errorf("pull's delta of the run at chunk %d does not decode to its target (%v)", j.first, err)
		}
		c.FromBase += uvarintLen(uint64(j.first)) + uvarintLen(uint64(len(j.target))) + uvarintLen(uint64(len(delta))) + len(delta)
	}
	c.Encode = time.Since(start)
	return c, nil
}

// cutChunks cuts data with p and returns the chunk list and the chunks'
// offsets, with the total size last.
func cutChunks(data []byte, p engine.ChunkerParams) ([]engine.ChunkRef, []int64, error) {
	ch, err := engine.NewChunker(bytes.NewReader(data), p)
	if err != nil {
		return nil, nil, err
	}
	var refs []engine.ChunkRef
	off := []int64{0}
	for {
		b, err := ch.Next()
		if errors.Is(err, io.EOF) {
			return refs, off, nil
		}
		if err != nil {
			return nil, nil, err
		}
		refs = append(refs, engine.ChunkRef{ID: engine.SumChunk(b), Size: uint32(len(b))})
		off = append(off, off[len(off)-1]+int64(len(b)))
	}
}

// ChunkerFor returns the parameters of the named chunker for chunks of avg
// bytes on average: min a quarter and max four times avg, or the ratios of
// the chunker's defaults if it refuses those.
func ChunkerFor(name string, avg uint32) (engine.ChunkerParams, error) {
	k, err := engine.LookupChunker(name)
	if err != nil {
		return engine.ChunkerParams{}, err
	}
	p := k.Defaults
	p.Min, p.Avg, p.Max = avg/4, avg, avg*4
	if engine.ValidateParams(p) == nil {
		return p, nil
	}
	d := k.Defaults
	p.Min = uint32(uint64(avg) * uint64(d.Min) / uint64(d.Avg))
	p.Max = uint32(uint64(avg) * uint64(d.Max) / uint64(d.Avg))
	if err := engine.ValidateParams(p); err != nil {
		return engine.ChunkerParams{}, err
	}
	return p, nil
}

func uvarintLen(v uint64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], v)
}

// DefaultResync is the strategy chunksync's pushes and pulls use: the
// default content-defined chunker at its defaults, sub-chunks of 256 bytes
// (320 on average) named by 4-byte hashes, the engine's zstd levels, all changed
// runs of a file in one delta. BenchmarkResync shows how the measurements
// of x/tools releases led to it.
func DefaultResync() (ResyncStrategy, error) {
	k, err := engine.LookupChunker(engine.DefaultCDC)
	if err != nil {
		return ResyncStrategy{}, err
	}
	return ResyncStrategy{Chunker: k.Defaults, SubChunkSize: 256, HashLen: 4, Batch: true}, nil
}
