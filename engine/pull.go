package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// Fetcher is the server side of a pull, as the engine sees it; the transport
// package implements it, tests use an in-memory one.
type Fetcher interface {
	// Fetch asks for the chunks refs, whose IDs are distinct, and calls got
	// once for each with its raw (uncompressed) bytes, in any order and
	// possibly from several goroutines at once. data is valid only during
	// the call. Fetch returns nil once got has returned for every ref, or
	// else an error: a chunk the server lacks is an error, never a silent
	// omission, and an error from got ends the fetch and is returned
	// (wrapped or not). Fetch does not return while a call of got is
	// running and calls it no more afterwards. Pull calls Fetch from one
	// goroutine at a time and never asks twice for a chunk got accepted.
	Fetch(ctx context.Context, refs []ChunkRef, got func(ref ChunkRef, data []byte) error) error
}

// DeltaFetcher is a Fetcher that can also send chunks as one delta against
// chunks the client holds, made against a signature of them that the
// server makes itself: a pull onto an old copy that the server still keeps
// receives little besides the change.
type DeltaFetcher interface {
	Fetcher
	// FetchDelta returns targets, concatenated in order, as a delta
	// against base, the client's chunks concatenated in order; ok is false
	// when the remote cannot make one (it lacks a base chunk).
	FetchDelta(ctx context.Context, targets, base []ChunkRef) (payload []byte, ok bool, err error)
}

// PartialPrefix and PartialSuffix frame the name of the file a pull writes
// before it renames it over the local file: ".NAME.chunksync-part" beside
// NAME. The name is fixed so that a pull that was interrupted finds its
// work again; see PartialPath.
const (
	PartialPrefix = "."
	PartialSuffix = ".chunksync-part"
)

// maxNameLen is the longest file name that common file systems accept.
const maxNameLen = 255

// PartialPath returns the partial file a pull of local writes. A base name
// too long to take the prefix and suffix is replaced by its hash.
func PartialPath(local string) string {
	dir, base := filepath.Split(filepath.Clean(local))
	name := PartialPrefix + base + PartialSuffix
	if len(name) > maxNameLen {
		name = PartialPrefix + SumChunk([]byte(base)).String()[:32] + PartialSuffix
	}
	return filepath.Join(dir, name)
}

// PullOptions tune a pull. The zero value is usable.
type PullOptions struct {
	// Seeds are more local files that may hold chunks of the version, for
	// example an older copy kept elsewhere. Each is read once, and only
	// while some chunk still has no local source; a seed that cannot be
	// opened fails the pull.
	Seeds []string
	// BatchChunks and BatchBytes bound one Fetch call; defaults 1024 chunks
	// and 64 MiB of chunk data.
	BatchChunks int
	BatchBytes  int64
	// Progress, when not nil, receives StageReused and StageFetched reports,
	// which add up to the manifest's size.
	Progress Progress
}

// PullResult says what a pull did. Every chunk of the manifest, each
// repetition included, is counted once: as fetched if it was the copy that
// crossed the network, as reused otherwise, so that ChunksReused +
// ChunksFetched is the manifest's chunk count and BytesReused +
// BytesFetched its size.
type PullResult struct {
	Manifest *Manifest
	// ChunksReused and BytesReused count the chunks not fetched: found in
	// place in the partial file of an interrupted pull, copied from the
	// local file, a seed or the partial file, or repetitions of a chunk
	// fetched once.
	ChunksReused int
	BytesReused  int64
	// ChunksFetched and BytesFetched count the distinct chunks fetched and
	// their raw bytes.
	ChunksFetched int
	BytesFetched  int64
	// Resumed counts the bytes of BytesReused that were already in place in
	// the partial file of an interrupted pull.
	Resumed int64
	// UpToDate is true when the local file already held the version: it
	// was kept, only its mode and modification time set.
	UpToDate bool
	Duration time.Duration
}

// verifyChunker is how Pull cuts the finished file to compute its digests
// with Scan: the cheapest cut, since the chunks are not looked at.
var verifyChunker = ChunkerParams{Name: "fixed", Min: fixedDefaultSize, Avg: fixedDefaultSize, Max: fixedDefaultSize}

// errSourcesFound ends a seed scan early once every chunk has a source.
var errSourcesFound = errors.New("every chunk has a local source")

// Pull makes the file at local hold the version m describes. It reuses
// every chunk it finds in the local file, the seeds and the partial file of
// an interrupted pull, fetches the others from f, and writes them into the
// partial file (see PartialPath). Once the whole file is written it checks
// size, BLAKE3 and MD5 against m, then sets m's mode and modification time
// and renames the partial file over local. A pull that fails leaves local
// as it was and the partial file in place, so that running it again fetches
// only what is still missing. When local already holds the version nothing
// is written (UpToDate).
//
// Content that does not match m fails with an error wrapping
// ErrDigestMismatch, fetched bytes that do not match their chunk with one
// wrapping ErrChunkMismatch. Pull refuses a local path that is anything but
// a regular file or absent. Memory does not grow with the file beyond a few
// words per chunk of m: chunk data is held only a few chunks at a time.
func Pull(ctx context.Context, f Fetcher, m *Manifest, local string, opts PullOptions) (PullResult, error) {
	start := time.Now()
	p := &puller{m: m, opts: opts}
	err := p.run(ctx, f, filepath.Clean(local))
	p.closeFiles()
	res := PullResult{
		Manifest:      m,
		ChunksReused:  int(p.reusedChunks.Load()),
		BytesReused:   p.reusedBytes.Load(),
		ChunksFetched: int(p.fetchedChunks.Load()),
		BytesFetched:  p.fetchedBytes.Load(),
		Resumed:       p.resumed,
		UpToDate:      p.upToDate,
		Duration:      time.Since(start),
	}
	if err != nil {
		return res, fmt.Errorf("pull %s: %w", local, err)
	}
	return res, nil
}

// puller is the state of one Pull.
type puller struct {
	m    *Manifest
	opts PullOptions
	// offsets[i] is where chunk i of m starts.
	offsets []int64
	// wants holds every distinct chunk of m.
	wants map[ChunkID]*wantedChunk
	// files are the files chunks may be copied from: the local file, the
	// partial file and the seeds, as far as they are open.
	files []*os.File
	part  *os.File
	// local lists the chunks of the local file, cut as m was cut, in
	// order, and localFile indexes files for it; the bases of deltas.
	local     []ChunkRef
	localFile int

	reusedChunks, fetchedChunks atomic.Int64
	reusedBytes, fetchedBytes   atomic.Int64
	resumed                     int64
	upToDate                    bool
}

// wantedChunk is one distinct chunk of the manifest.
type wantedChunk struct {
	ref ChunkRef
	// at lists, in order, the chunks of the manifest that hold it and are
	// not in place yet.
	at []int
	// src indexes puller.files for a file that held the chunk at srcOff when
	// it was cut, or is -1.
	src    int
	srcOff int64
	// fetched is set by the delivery that writes the chunk.
	fetched atomic.Bool
}

func (p *puller) run(ctx context.Context, f Fetcher, local string) error {
	m := p.m
	if m == nil {
		return errors.New("no manifest")
	}
	if err := m.Validate(); err != nil {
		return err
	}
	if p.opts.BatchChunks <= 0 {
		p.opts.BatchChunks = 1024
	}
	if p.opts.BatchBytes <= 0 {
		p.opts.BatchBytes = 64 << 20
	}
	if p.opts.Progress == nil {
		p.opts.Progress = noProgress{}
	}
	fi, err := os.Lstat(local)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		fi = nil
	case err != nil:
		return err
	default:
		if err := regularOrAbsent(local, fi); err != nil {
			return err
		}
	}
	p.offsets = make([]int64, len(m.Chunks))
	p.wants = make(map[ChunkID]*wantedChunk, len(m.Chunks))
	var off int64
	for i, ref := range m.Chunks {
		p.offsets[i] = off
		off += int64(ref.Size)
		w := p.wants[ref.ID]
		if w == nil {
			p.wants[ref.ID] = &wantedChunk{ref: ref, src: -1}
		} else if w.ref.Size != ref.Size {
			return fmt.Errorf("%w: manifest lists chunk %s with sizes %d and %d", ErrMalformed, ref.ID, w.ref.Size, ref.Size)
		}
	}

	if fi != nil {
		if err := p.scanLocal(ctx, local, fi); err != nil {
			return err
		}
		if p.upToDate {
			return p.keepLocal(local)
		}
	}
	if err := p.openPartial(ctx, PartialPath(local)); err != nil {
		return err
	}
	if err := p.scanSeeds(ctx); err != nil {
		return err
	}
	if err := p.fill(ctx, f); err != nil {
		return err
	}
	return p.finish(ctx, local)
}

// regularOrAbsent refuses a local path that holds anything but a regular
// file: Pull replaces files, never directories, links or devices.
func regularOrAbsent(local string, fi fs.FileInfo) error {
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		return nil
	case mode.IsDir():
		return fmt.Errorf("%s is a directory, not a regular file", local)
	case mode&fs.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link, not a regular file", local)
	default:
		return fmt.Errorf("%s is not a regular file (mode %s)", local, mode)
	}
}

// addFile keeps f open as a source of chunks and returns its index in files.
func (p *puller) addFile(f *os.File) int {
	p.files = append(p.files, f)
	return len(p.files) - 1
}

// closeFiles closes every file opened as a source, the partial file too.
func (p *puller) closeFiles() error {
	var errs []error
	for _, f := range p.files {
		errs = append(errs, f.Close())
	}
	p.files = nil
	return errors.Join(errs...)
}

// source records that files[file] held chunk id at off, unless the chunk
// has a source already or is not one of the manifest's. It reports whether
// it recorded one.
func (p *puller) source(id ChunkID, file int, off int64) bool {
	w := p.wants[id]
	if w == nil || w.src >= 0 {
		return false
	}
	w.src, w.srcOff = file, off
	return true
}

// scanLocal cuts the local file as m was cut and records where its chunks
// are. Scanning gives the file's digests too: when they and its size are
// m's, the file is the version already.
func (p *puller) scanLocal(ctx context.Context, local string, lfi fs.FileInfo) error {
	f, err := os.Open(local)
	if err != nil {
		return err
	}
	file := p.addFile(f)
	if fi, err := f.Stat(); err != nil {
		return err
	} else if !os.SameFile(fi, lfi) {
		return fmt.Errorf("%s changed while it was opened", local)
	}
	var size int64
	p.localFile = file
	digests, err := Scan(ctx, f, p.m.Chunker, func(c ScannedChunk) error {
		ReleaseChunkData(c.Data)
		p.source(c.Ref.ID, file, c.Offset)
		p.local = append(p.local, c.Ref)
		size += int64(c.Ref.Size)
		return nil
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", local, err)
	}
	if size == p.m.Size && digests == p.m.Digests {
		p.upToDate = true
		return nil
	}
	if scanReproducesCut(p.m) {
		return nil
	}
	// A disk image changed in place keeps its unchanged chunks at m's
	// offsets, where a cut that cannot be replayed would not find them.
	found, err := p.inPlace(ctx, f, size)
	if err != nil {
		return err
	}
	for i, ok := range found {
		if ok {
			p.source(p.m.Chunks[i].ID, file, p.offsets[i])
		}
	}
	return nil
}

// scanReproducesCut reports whether cutting the same bytes with m.Chunker
// ends chunks where m's chunks end: true for the content-defined chunkers,
// and for any chunker when every chunk but the last is Avg bytes long, as
// fixed cuts; false otherwise, for example for adaptive, whose sizes
// followed the link speed of the push.
func scanReproducesCut(m *Manifest) bool {
	switch m.Chunker.Name {
	case "rabin", "fastcdc":
		return true
	}
	for _, c := range m.Chunks[:max(len(m.Chunks)-1, 0)] {
		if c.Size != m.Chunker.Avg {
			return false
		}
	}
	return true
}

// keepLocal gives the local file that holds the version already m's mode
// and modification time, and removes the partial file of an earlier pull,
// which is of no use any more.
func (p *puller) keepLocal(local string) error {
	n := len(p.m.Chunks)
	p.reusedChunks.Store(int64(n))
	p.reusedBytes.Store(p.m.Size)
	p.opts.Progress.Add(StageReused, p.m.Size)
	if err := os.Chmod(local, p.m.Mode.Perm()); err != nil {
		return err
	}
	if err := os.Chtimes(local, p.m.ModTime, p.m.ModTime); err != nil {
		return err
	}
	part := PartialPath(local)
	if fi, err := os.Lstat(part); err == nil && fi.Mode().IsRegular() {
		if err := os.Remove(part); err != nil {
			return err
		}
	}
	return nil
}

// openPartial opens or creates the partial file, counts the chunks already
// in place in it (an interrupted pull wrote them), records them as sources
// for their repetitions, lists the chunks still to write, and sizes the
// file.
func (p *puller) openPartial(ctx context.Context, path string) error {
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("partial file: %w", regularOrAbsent(path, fi))
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	p.part = f
	file := p.addFile(f)
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	found, err := p.inPlace(ctx, f, fi.Size())
	if err != nil {
		return err
	}
	for i, ref := range p.m.Chunks {
		if i < len(found) && found[i] {
			p.source(ref.ID, file, p.offsets[i])
			p.resumed += int64(ref.Size)
			p.countReused(1, ref.Size)
			continue
		}
		w := p.wants[ref.ID]
		w.at = append(w.at, i)
	}
	if err := f.Truncate(p.m.Size); err != nil {
		return err
	}
	return nil
}

// scanSeeds cuts the seeds, while some chunk still to write has no source,
// and records where their chunks are.
func (p *puller) scanSeeds(ctx context.Context) error {
	unsourced := 0
	for _, w := range p.wants {
		if len(w.at) > 0 && w.src < 0 {
			unsourced++
		}
	}
	for _, seed := range p.opts.Seeds {
		if unsourced == 0 {
			return nil
		}
		f, err := os.Open(seed)
		if err != nil {
			return fmt.Errorf("seed: %w", err)
		}
		fi, err := f.Stat()
		if err == nil && !fi.Mode().IsRegular() {
			err = fmt.Errorf("seed %s is not a regular file", seed)
		}
		if err != nil {
			f.Close()
			return err
		}
		if p.isOpen(fi) {
			f.Close()
			continue
		}
		file := p.addFile(f)
		_, err = Scan(ctx, f, p.m.Chunker, func(c ScannedChunk) error {
			ReleaseChunkData(c.Data)
			if w := p.wants[c.Ref.ID]; w != nil && len(w.at) > 0 && p.source(c.Ref.ID, file, c.Offset) {
				if unsourced--; unsourced == 0 {
					return errSourcesFound
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, errSourcesFound) {
			return fmt.Errorf("read seed %s: %w", seed, err)
		}
	}
	return nil
}

// isOpen reports whether fi is one of the files already open as sources.
func (p *puller) isOpen(fi fs.FileInfo) bool {
	for _, f := range p.files {
		if ofi, err := f.Stat(); err == nil && os.SameFile(fi, ofi) {
			return true
		}
	}
	return false
}

// pullWorkers is how many goroutines read and hash local chunks at once.
func pullWorkers() int { return min(runtime.GOMAXPROCS(0), 4) }

// inPlace reports, for every chunk of m that ends within the first limit
// bytes of f, whether f holds it at its offset in m. It reads f in order,
// a few chunks ahead of the goroutines that hash them.
func (p *puller) inPlace(ctx context.Context, f *os.File, limit int64) ([]bool, error) {
	n := 0
	for n < len(p.m.Chunks) && p.offsets[n]+int64(p.m.Chunks[n].Size) <= limit {
		n++
	}
	found := make([]bool, n)
	type read struct {
		i   int
		buf []byte
	}
	reads := make(chan read, pullWorkers())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(reads)
		for i, ref := range p.m.Chunks[:n] {
			buf := getChunkData(int(ref.Size))
			if _, err := f.ReadAt(buf, p.offsets[i]); err != nil {
				ReleaseChunkData(buf)
				if errors.Is(err, io.EOF) {
					return nil // the file shrank since its size was taken
				}
				return fmt.Errorf("read %s: %w", f.Name(), err)
			}
			select {
			case reads <- read{i, buf}:
			case <-gctx.Done():
				ReleaseChunkData(buf)
				return gctx.Err()
			}
		}
		return nil
	})
	for range pullWorkers() {
		g.Go(func() error {
			for r := range reads {
				found[r.i] = SumChunk(r.buf) == p.m.Chunks[r.i].ID
				ReleaseChunkData(r.buf)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return found, nil
}

// fill writes every chunk not yet in place: copied from its local source
// when it has one and that still holds it, fetched otherwise. Copying and
// fetching run at the same time; chunks whose source changed since it was
// cut are fetched after the others.
func (p *puller) fill(ctx context.Context, f Fetcher) error {
	var toCopy, toFetch []*wantedChunk
	for i, ref := range p.m.Chunks {
		w := p.wants[ref.ID]
		if len(w.at) == 0 || w.at[0] != i {
			continue // in place, or listed at its first position
		}
		if w.src >= 0 {
			toCopy = append(toCopy, w)
		} else {
			toFetch = append(toFetch, w)
		}
	}
	var stale []*wantedChunk
	copied := make(chan struct{})
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(copied)
		var err error
		stale, err = p.copyChunks(gctx, toCopy)
		return err
	})
	g.Go(func() error {
		if df, ok := f.(DeltaFetcher); ok && len(p.local) > 0 {
			var err error
			if toFetch, err = p.fetchDeltas(gctx, df, toFetch); err != nil {
				return err
			}
		}
		if err := p.fetch(gctx, f, toFetch); err != nil {
			return err
		}
		select {
		case <-copied:
		case <-gctx.Done():
			return gctx.Err()
		}
		return p.fetch(gctx, f, stale)
	})
	return g.Wait()
}

// copyChunks copies chunks from their local sources into the partial file
// and returns those whose source no longer holds them.
func (p *puller) copyChunks(ctx context.Context, ws []*wantedChunk) ([]*wantedChunk, error) {
	var (
		mu    sync.Mutex
		stale []*wantedChunk
	)
	next := make(chan *wantedChunk)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(next)
		for _, w := range ws {
			select {
			case next <- w:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range pullWorkers() {
		g.Go(func() error {
			for w := range next {
				ok, err := p.copyChunk(w)
				if err != nil {
					return err
				}
				if !ok {
					mu.Lock()
					stale = append(stale, w)
					mu.Unlock()
				}
			}
			return nil
		})
	}
	err := g.Wait()
	return stale, err
}

// copyChunk copies one chunk from its source to its positions, unless the
// source no longer reads back as the chunk (the file changed since it was
// cut, or cannot be read any more): then it reports false and the chunk is
// fetched instead.
func (p *puller) copyChunk(w *wantedChunk) (bool, error) {
	buf := getChunkData(int(w.ref.Size))
	defer ReleaseChunkData(buf)
	if _, err := p.files[w.src].ReadAt(buf, w.srcOff); err != nil || SumChunk(buf) != w.ref.ID {
		return false, nil
	}
	if err := p.place(w, buf); err != nil {
		return false, err
	}
	p.countReused(len(w.at), w.ref.Size)
	return true, nil
}

// place writes the bytes of w at each of its positions.
func (p *puller) place(w *wantedChunk, data []byte) error {
	for _, i := range w.at {
		if _, err := p.part.WriteAt(data, p.offsets[i]); err != nil {
			return fmt.Errorf("write %s: %w", p.part.Name(), err)
		}
	}
	return nil
}

func (p *puller) countReused(chunks int, size uint32) {
	n := int64(chunks) * int64(size)
	p.reusedChunks.Add(int64(chunks))
	p.reusedBytes.Add(n)
	p.opts.Progress.Add(StageReused, n)
}

// fetchDeltas fetches the chunks of ws that replaced chunks of the local
// file as deltas against those (planDeltas), and returns the chunks still
// to fetch: those with no base, and those of a delta the remote could not
// make or that did not decode to its chunks (the local file changed since
// it was cut, say).
func (p *puller) fetchDeltas(ctx context.Context, df DeltaFetcher, ws []*wantedChunk) ([]*wantedChunk, error) {
	byIndex := make(map[int]*wantedChunk, len(ws))
	lacked := make([]int, len(ws))
	for k, w := range ws {
		byIndex[w.at[0]] = w
		lacked[k] = w.at[0]
	}
	// Bundles of about an equal share of the bytes, each against only the
	// chunks its own runs replaced, so that the remote makes them side by
	// side, each with a dictionary of its own share: the time to make a
	// delta grows with its dictionary.
	var lackedBytes int64
	for _, w := range ws {
		lackedBytes += int64(w.ref.Size)
	}
	share := min(MaxDeltaSize, max(deltaPartBytes, lackedBytes/int64(pullWorkers())+1))
	bundles, plain := planDeltas(p.local, p.m.Chunks, lacked, share)
	var mu sync.Mutex
	rest := make([]*wantedChunk, 0, len(plain))
	for _, i := range plain {
		rest = append(rest, byIndex[i])
	}
	localOff := chunkOffsets(p.local)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(pullWorkers())
	for _, b := range bundles {
		g.Go(func() error {
			targets := make([]ChunkRef, len(b.targets))
			for k, i := range b.targets {
				targets[k] = p.m.Chunks[i]
			}
			var baseRefs []ChunkRef
			for _, sp := range b.base {
				baseRefs = append(baseRefs, p.local[sp.Start:sp.End]...)
			}
			ok, err := p.fetchDelta(gctx, df, targets, baseRefs, p.readBase(b, localOff))
			if err == nil && !ok {
				mu.Lock()
				for _, i := range b.targets {
					rest = append(rest, byIndex[i])
				}
				mu.Unlock()
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return rest, nil
}

// readBase reads the local chunks of b's base, concatenated; nil when the
// local file cannot be read any more (the targets are fetched in full).
func (p *puller) readBase(b deltaBundle, localOff []int64) []byte {
	base := make([]byte, 0, b.baseBytes)
	for _, sp := range b.base {
		n := int(localOff[sp.End] - localOff[sp.Start])
		if _, err := p.files[p.localFile].ReadAt(base[len(base):len(base)+n], localOff[sp.Start]); err != nil {
			return nil
		}
		base = base[:len(base)+n]
	}
	return base
}

// fetchDelta fetches targets as one delta against baseRefs, whose bytes
// base holds, and places them; ok is false when the delta could not be had
// or did not give the targets.
func (p *puller) fetchDelta(ctx context.Context, df DeltaFetcher, targets, baseRefs []ChunkRef, base []byte) (bool, error) {
	if base == nil {
		return false, nil
	}
	payload, ok, err := df.FetchDelta(ctx, targets, baseRefs)
	if err != nil || !ok {
		return false, err
	}
	size := chunkOffsets(targets)[len(targets)]
	raw, err := DecodeDelta(nil, base, payload, uint32(size))
	if err != nil {
		return false, nil
	}
	for off, k := 0, 0; k < len(targets); k++ {
		t := targets[k]
		if VerifyChunk(t.ID, raw[off:off+int(t.Size)]) != nil {
			return false, nil
		}
		off += int(t.Size)
	}
	for _, t := range targets {
		w := p.wants[t.ID]
		data := raw[:t.Size]
		raw = raw[t.Size:]
		if w.fetched.Swap(true) {
			continue
		}
		if err := p.place(w, data); err != nil {
			w.fetched.Store(false)
			return false, err
		}
		p.fetchedChunks.Add(1)
		p.fetchedBytes.Add(int64(t.Size))
		p.opts.Progress.Add(StageFetched, int64(t.Size))
		if len(w.at) > 1 {
			p.countReused(len(w.at)-1, t.Size)
		}
	}
	return true, nil
}

// fetch fetches ws in batches bounded by BatchChunks and BatchBytes.
func (p *puller) fetch(ctx context.Context, f Fetcher, ws []*wantedChunk) error {
	for len(ws) > 0 {
		n, size := 0, int64(0)
		for n < len(ws) && n < p.opts.BatchChunks && (n == 0 || size+int64(ws[n].ref.Size) <= p.opts.BatchBytes) {
			size += int64(ws[n].ref.Size)
			n++
		}
		if err := p.fetchBatch(ctx, f, ws[:n]); err != nil {
			return err
		}
		ws = ws[n:]
	}
	return nil
}

// fetchBatch fetches ws with one Fetch call and writes each chunk, once
// verified, at its positions as it arrives.
func (p *puller) fetchBatch(ctx context.Context, f Fetcher, ws []*wantedChunk) error {
	refs := make([]ChunkRef, len(ws))
	batch := make(map[ChunkID]*wantedChunk, len(ws))
	for i, w := range ws {
		refs[i] = w.ref
		batch[w.ref.ID] = w
	}
	// Every call of got holds mu for reading, so that taking it for writing
	// waits for the last one; a fetcher that breaks its word and delivers
	// after Fetch returned then finds closed set, not a closed file.
	var (
		mu     sync.RWMutex
		closed bool
	)
	got := func(ref ChunkRef, data []byte) error {
		mu.RLock()
		defer mu.RUnlock()
		if closed {
			return fmt.Errorf("fetcher delivered chunk %s after Fetch returned", ref.ID)
		}
		w := batch[ref.ID]
		if w == nil {
			return fmt.Errorf("fetcher delivered chunk %s, which was not asked for", ref.ID)
		}
		if len(data) != int(w.ref.Size) {
			return fmt.Errorf("fetched chunk %s: %w: %d bytes, manifest says %d", w.ref.ID, ErrChunkMismatch, len(data), w.ref.Size)
		}
		if err := VerifyChunk(w.ref.ID, data); err != nil {
			return fmt.Errorf("fetched %w", err)
		}
		if w.fetched.Swap(true) {
			return nil // delivered twice: written already
		}
		if err := p.place(w, data); err != nil {
			// Not written: a delivery of it again must write it.
			w.fetched.Store(false)
			return err
		}
		size := int64(w.ref.Size)
		p.fetchedChunks.Add(1)
		p.fetchedBytes.Add(size)
		p.opts.Progress.Add(StageFetched, size)
		if len(w.at) > 1 {
			p.countReused(len(w.at)-1, w.ref.Size)
		}
		return nil
	}
	err := f.Fetch(ctx, refs, got)
	mu.Lock()
	closed = true
	mu.Unlock()
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	for _, w := range ws {
		if !w.fetched.Load() {
			return fmt.Errorf("fetch: fetcher returned without chunk %s", w.ref.ID)
		}
	}
	return nil
}

// finish makes the partial file durable, verifies it, gives it m's mode
// and modification time and renames it over local.
func (p *puller) finish(ctx context.Context, local string) error {
	part := p.part.Name()
	if err := p.part.Sync(); err != nil {
		return err
	}
	var size int64
	digests, err := Scan(ctx, io.NewSectionReader(p.part, 0, math.MaxInt64), verifyChunker, func(c ScannedChunk) error {
		size += int64(c.Ref.Size)
		ReleaseChunkData(c.Data)
		return nil
	})
	if err != nil {
		return fmt.Errorf("verify %s: %w", part, err)
	}
	if err := checkDigests(p.m, size, digests); err != nil {
		return err
	}
	if err := p.part.Chmod(p.m.Mode.Perm()); err != nil {
		return err
	}
	// Closed before the rename, which some systems refuse for open files;
	// the partial file's close reports a failed write that Sync missed.
	if err := p.closeFiles(); err != nil {
		return err
	}
	if err := os.Chtimes(part, p.m.ModTime, p.m.ModTime); err != nil {
		return err
	}
	// local may have become something else while the pull ran.
	if fi, err := os.Lstat(local); err == nil {
		if err := regularOrAbsent(local, fi); err != nil {
			return err
		}
	}
	if err := os.Rename(part, local); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(local))
	if err != nil {
		return err
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir.Name(), err)
	}
	return nil
}
