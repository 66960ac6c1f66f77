package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// Stage names a point of the push or pull pipeline that progress is
// reported from.
type Stage int

const (
	// StageScanned counts bytes read, chunked and hashed.
	StageScanned Stage = iota
	// StagePresent counts bytes of chunks the remote already held.
	StagePresent
	// StageStored counts raw bytes of chunks the remote acknowledged as stored.
	StageStored
	// StageReused counts bytes a pull did not fetch: in place, copied
	// from a local file, or a repeat of a fetched chunk.
	StageReused
	// StageFetched counts raw bytes of the distinct chunks a pull fetched.
	StageFetched
)

// Progress receives progress reports from a push or a pull. Add is called
// from several goroutines at once.
type Progress interface {
	Add(stage Stage, bytes int64)
}

// PushOptions tune a push. The zero value is usable with Chunker set.
type PushOptions struct {
	// Chunker is how the file is cut.
	Chunker ChunkerParams
	// BatchChunks and BatchBytes bound one "which of these do you have?"
	// question; defaults 1024 chunks and 64 MiB of chunk data. The first
	// question asks about at most firstBatchBytes.
	BatchChunks int
	BatchBytes  int64
	// Compressors is the number of goroutines compressing missing chunks;
	// default GOMAXPROCS.
	Compressors int
	// Progress, when not nil, receives progress reports.
	Progress Progress
	// Raw sends chunks uncompressed, for data that is known not to
	// compress (see DetectContent): it saves a trial compression per chunk.
	Raw bool
	// ChunkTime is, for the adaptive chunker, how long one chunk should
	// take on one stream; default DefaultChunkTime.
	ChunkTime time.Duration

	noDeltas bool // after a refused delta: send every chunk as it is
}

// PushResult says what a push did.
type PushResult struct {
	Session  string
	Manifest *Manifest
	Version  uint64
	// ChunksSent and BytesSent count the chunks the remote lacked and the
	// encoded bytes sent for them; RawBytesSent their uncompressed size.
	ChunksSent   int
	BytesSent    int64
	RawBytesSent int64
	Duration     time.Duration
}

type noProgress struct{}

func (noProgress) Add(Stage, int64) {}

// payloadPool holds buffers for encoded chunks; a buffer returns to it when
// the remote acknowledges the chunk.
var payloadPool = sync.Pool{New: func() any { return new([]byte) }}

// Push sends the file at local to the remote as remotePath: it cuts the file,
// asks the remote which chunks it lacks, sends those compressed, and commits
// the manifest. A push that fails leaves every acknowledged chunk on the
// remote, so running it again sends only what is still missing.
//
// A delta the remote refuses (a false match of a short sub-chunk hash, or
// base chunks garbage collection took in the meantime) would be refused
// again on every run; the push then goes on once more without deltas.
func Push(ctx context.Context, remote Remote, local, remotePath string, opts PushOptions) (PushResult, error) {
	res, err := push(ctx, remote, local, remotePath, opts)
	if errors.Is(err, ErrDeltaRefused) && !opts.noDeltas && ctx.Err() == nil {
		opts.noDeltas = true
		res, err = push(ctx, remote, local, remotePath, opts)
	}
	return res, err
}

// firstBatchBytes bounds the first batch a push asks the remote about.
// A remote may open the session with that question, which then waits
// for the batch to be cut (64 MiB take about 0.1 s); the next batch is
// cut while it travels, and asked about as soon as it returns, a round
// trip later. Through 400 Mbit/s and 200 ms, the streams' first four
// round trips of slow start send less than 8 MiB.
const firstBatchBytes = 8 << 20

// ErrDeltaRefused is wrapped by the error of an upload whose remote
// refused a delta.
var ErrDeltaRefused = errors.New("delta refused")

func push(ctx context.Context, remote Remote, local, remotePath string, opts PushOptions) (PushResult, error) {
	start := time.Now()
	if err := ValidateParams(opts.Chunker); err != nil {
		return PushResult{}, err
	}
	f, err := os.Open(local)
	if err != nil {
		return PushResult{}, fmt.Errorf("push: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return PushResult{}, fmt.Errorf("push: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return PushResult{}, fmt.Errorf("push %s: not a regular file", local)
	}
	spec := UploadSpec{
		Path:    remotePath,
		Size:    fi.Size(),
		Mode:    fi.Mode().Perm(),
		ModTime: fi.ModTime(),
		Chunker: opts.Chunker,
	}
	if opts.BatchChunks <= 0 {
		opts.BatchChunks = 1024
	}
	if opts.BatchBytes <= 0 {
		opts.BatchBytes = 64 << 20
	}
	if opts.Compressors <= 0 {
		opts.Compressors = runtime.GOMAXPROCS(0)
	}
	if opts.Progress == nil {
		opts.Progress = noProgress{}
	}
	newChunker := func(r io.Reader) Chunker { return registry[spec.Chunker.Name].New(r, spec.Chunker) }
	var sizes *SizeController
	if spec.Chunker.Name == AdaptiveChunker {
		// The chunker follows what the streams measure; small batches keep
		// the cutting close behind the sending, so that it follows soon.
		sizes = NewSizeController(spec.Chunker, WithChunkTime(opts.ChunkTime))
		newChunker = func(r io.Reader) Chunker { return NewAdaptiveChunker(r, spec.Chunker, sizes) }
		opts.BatchChunks = 1
	}

	m := &Manifest{Path: spec.Path, Size: spec.Size, Mode: spec.Mode, ModTime: spec.ModTime, Chunker: spec.Chunker}
	var sent struct {
		chunks     atomic.Int64
		bytes, raw atomic.Int64
	}
	// stored counts what the remote acknowledged: chunks of raw bytes, sent
	// as bytes.
	stored := func(chunks, raw, bytes int64) {
		sent.chunks.Add(chunks)
		sent.bytes.Add(bytes)
		sent.raw.Add(raw)
		opts.Progress.Add(StageStored, raw)
	}
	// Chunk data is not held while the remote is asked about it: the scan
	// keeps only each chunk's place, and the chunks the remote lacks are read
	// again (from the page cache, moments after the scan) to be sent. So
	// memory does not grow with the batch size, and a batch can be large
	// enough to keep a long link busy.
	batches := make(chan []ScannedChunk, 1)
	queue := 2 * opts.Compressors
	if sizes != nil {
		queue = 0
	}
	toSend := make(chan ScannedChunk, queue)

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(batches)
		var batch []ScannedChunk
		var batchBytes int64
		limit := min(opts.BatchBytes, firstBatchBytes)
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			select {
			case batches <- batch:
			case <-gctx.Done():
				return gctx.Err()
			}
			batch, batchBytes, limit = nil, 0, opts.BatchBytes
			return nil
		}
		digests, err := scan(gctx, f, newChunker, func(c ScannedChunk) error {
			ReleaseChunkData(c.Data)
			c.Data = nil
			opts.Progress.Add(StageScanned, int64(c.Ref.Size))
			batch = append(batch, c)
			batchBytes += int64(c.Ref.Size)
			if len(batch) >= opts.BatchChunks || batchBytes >= limit {
				return flush()
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("read %s: %w", local, err)
		}
		m.Digests = digests
		return flush()
	})
	// The session opens while the first batch is cut, or, with a remote
	// that opens it with the first missing request, with that batch. Not
	// on gctx, which ends before the commit.
	up, err := remote.OpenUpload(ctx, spec)
	if err != nil {
		stop()
		g.Wait()
		return PushResult{}, fmt.Errorf("push %s: open upload: %w", local, err)
	}
	defer up.Close()
	var res PushResult
	// With a base version on the remote, the chunks it lacks wait for the
	// end of the scan, when ReplacedBase can pair them with the base chunks
	// they replaced, and go as deltas; unless they add up to more than a
	// small edit, and then they go at once. Whether there is one is known
	// once the first missing request is answered: a remote may open the
	// session with it.
	du, _ := up.(DeltaUpload)
	var base *Manifest
	var deferred []ScannedChunk
	var deferredBytes int64
	send := func(c ScannedChunk) error {
		select {
		case toSend <- c:
			return nil
		case <-gctx.Done():
			return gctx.Err()
		}
	}
	// The remote is asked about a batch while the chunks of the one before
	// are sent: asked only once they were all handed on, it would leave
	// the streams a round trip without chunks at every batch, about what
	// the queues behind them hold. Through 400 Mbit/s and 200 ms that is
	// 10 MB, and 64 MiB batches ran at 340 Mbit/s.
	type answer struct {
		batch   []ScannedChunk
		missing []bool
	}
	answers := make(chan answer, 1)
	g.Go(func() error {
		defer close(answers)
		for batch := range batches {
			refs := make([]ChunkRef, len(batch))
			for i, c := range batch {
				refs[i] = c.Ref
			}
			missing, err := up.Missing(gctx, len(m.Chunks), refs)
			if err == nil && len(missing) != len(refs) {
				err = fmt.Errorf("remote answered %d of %d chunks", len(missing), len(refs))
			}
			if err != nil {
				return fmt.Errorf("ask remote for missing chunks: %w", err)
			}
			m.Chunks = append(m.Chunks, refs...)
			select {
			case answers <- answer{batch, missing}:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	g.Go(func() error {
		defer close(toSend)
		queued := make(map[ChunkID]struct{})
		first := true
		for a := range answers {
			if first && du != nil && !opts.noDeltas {
				base = du.Base()
			}
			first = false
			batch, missing := a.batch, a.missing
			for i, c := range batch {
				_, dup := queued[c.Ref.ID]
				if !missing[i] || dup {
					// A chunk that repeats within the file travels once;
					// its later copies count as present.
					opts.Progress.Add(StagePresent, int64(c.Ref.Size))
					continue
				}
				queued[c.Ref.ID] = struct{}{}
				if base != nil && deferredBytes+int64(c.Ref.Size) <= maxDeferredBytes {
					deferred = append(deferred, c)
					deferredBytes += int64(c.Ref.Size)
					continue
				}
				if base != nil {
					base = nil
					for _, d := range deferred {
						if err := send(d); err != nil {
							return err
						}
					}
					deferred = nil
				}
				if err := send(c); err != nil {
					return err
				}
			}
		}
		if base == nil {
			return nil
		}
		byIndex := make(map[int]ScannedChunk, len(deferred))
		lacked := make([]int, len(deferred))
		for i, c := range deferred {
			byIndex[c.Index] = c
			lacked[i] = c.Index
		}
		bundles, plain := planDeltas(base.Chunks, m.Chunks, lacked, MaxDeltaSize)
		for _, i := range plain {
			if err := send(byIndex[i]); err != nil {
				return err
			}
		}
		// Deltas are made on as many goroutines as chunks are compressed.
		dg, dctx := errgroup.WithContext(gctx)
		dg.SetLimit(opts.Compressors)
		for _, b := range bundles {
			chunks := make([]ScannedChunk, len(b.targets))
			for k, i := range b.targets {
				chunks[k] = byIndex[i]
			}
			dg.Go(func() error {
				ok, err := sendDelta(dctx, du, f, chunks, b, opts.Compressors, stored)
				if err != nil {
					return fmt.Errorf("send delta: %w", err)
				}
				if ok {
					return nil
				}
				for _, c := range chunks {
					if err := send(c); err != nil {
						return err
					}
				}
				return nil
			})
		}
		if err := dg.Wait(); err != nil {
			return err
		}
		return nil
	})
	for range opts.Compressors {
		g.Go(func() error {
			for c := range toSend {
				data := getChunkData(int(c.Ref.Size))
				_, err := f.ReadAt(data, c.Offset)
				if err == nil && SumChunk(data) != c.Ref.ID {
					err = fmt.Errorf("%w: chunk %d at offset %d", ErrFileChanged, c.Index, c.Offset)
				}
				if err != nil {
					ReleaseChunkData(data)
					return fmt.Errorf("read %s: %w", local, err)
				}
				buf := payloadPool.Get().(*[]byte)
				var codec Codec
				var payload []byte
				if opts.Raw {
					codec, payload = CodecRaw, append((*buf)[:0], data...)
				} else {
					codec, payload = Compress((*buf)[:0], data)
				}
				ReleaseChunkData(data)
				*buf = payload
				size := int64(c.Ref.Size)
				var busy func(time.Duration)
				if sizes != nil {
					busy = func(d time.Duration) { sizes.Observe(size, d) }
				}
				err = up.Send(gctx, EncodedChunk{
					Busy: busy,
					ID:   c.Ref.ID, Codec: codec, RawSize: c.Ref.Size, Payload: payload,
					Release: func() {
						stored(1, size, int64(len(payload)))
						payloadPool.Put(buf)
					},
				})
				if err != nil {
					return fmt.Errorf("send chunk %s: %w", c.Ref.ID, err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		res.Session = up.ID()
		return res, fmt.Errorf("push %s: %w", local, err)
	}
	cr, err := up.Commit(ctx, m)
	res.Session = up.ID()
	res.ChunksSent, res.BytesSent, res.RawBytesSent = int(sent.chunks.Load()), sent.bytes.Load(), sent.raw.Load()
	res.Manifest = m
	res.Duration = time.Since(start)
	if err != nil {
		return res, fmt.Errorf("push %s: commit: %w", local, err)
	}
	res.Version = cr.Version
	return res, nil
}

// ErrFileChanged is returned when a file changes while it is being pushed.
var ErrFileChanged = errors.New("file changed while it was being pushed")
