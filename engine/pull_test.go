package engine

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// memFetcher serves the chunks of a memRemote to a pull, from two
// goroutines at once, and counts what it served.
type memFetcher struct {
	r *memRemote
	// failAfter, when positive, makes Fetch fail once that many chunks
	// have been accepted.
	failAfter int64
	// lie, when not nil, may replace the bytes of a chunk before delivery.
	lie func(ref ChunkRef, data []byte) []byte
	// skip, when set, is a chunk Fetch leaves out without an error.
	skip ChunkID

	accepted atomic.Int64
	mu       sync.Mutex
	served   map[ChunkID]int
}

var errLinkDown = errors.New("link down")

func newMemFetcher(r *memRemote) *memFetcher {
	return &memFetcher{r: r, served: map[ChunkID]int{}}
}

func (f *memFetcher) Fetch(ctx context.Context, refs []ChunkRef, got func(ChunkRef, []byte) error) error {
	g, ctx := errgroup.WithContext(ctx)
	for lane := range 2 {
		g.Go(func() error {
			for i := lane; i < len(refs); i += 2 {
				ref := refs[i]
				if ref.ID == f.skip {
					continue
				}
				if f.failAfter > 0 && f.accepted.Load() >= f.failAfter {
					return errLinkDown
				}
				data, err := f.r.Get(ctx, ref.ID, nil)
				if err != nil {
					return err
				}
				if f.lie != nil {
					data = f.lie(ref, data)
				}
				f.mu.Lock()
				f.served[ref.ID]++
				f.mu.Unlock()
				if err := got(ref, data); err != nil {
					return err
				}
				f.accepted.Add(1)
			}
			return nil
		})
	}
	return g.Wait()
}

// servedTwice returns a chunk the fetcher served more than once, if any.
func (f *memFetcher) servedTwice() (ChunkID, bool) {
	for id, n := range f.served {
		if n > 1 {
			return id, true
		}
	}
	return ChunkID{}, false
}

var pullModTime = time.Unix(1700000000, 123456789)

// pushVersion pushes data to r as "f", with mode 0o640 and pullModTime,
// and returns the manifest the push committed.
func pushVersion(t *testing.T, r *memRemote, data []byte, p ChunkerParams) *Manifest {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, data, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(src, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(src, pullModTime, pullModTime); err != nil {
		t.Fatal(err)
	}
	res, err := Push(context.Background(), r, src, "f", PushOptions{Chunker: p})
	if err != nil {
		t.Fatal(err)
	}
	return res.Manifest
}

// writeFile writes data to a new file named name in a new directory.
func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkPulled fails t unless local holds data with m's mode and mtime, no
// partial file is left, and res adds up.
func checkPulled(t *testing.T, local string, data []byte, m *Manifest, res PullResult) {
	t.Helper()
	got, err := os.ReadFile(local)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("pulled file differs: %d bytes, want %d", len(got), len(data))
	}
	fi, err := os.Stat(local)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != m.Mode.Perm() || !fi.ModTime().Equal(m.ModTime) {
		t.Errorf("mode %v mtime %v, want %v %v", fi.Mode(), fi.ModTime(), m.Mode.Perm(), m.ModTime)
	}
	if _, err := os.Lstat(PartialPath(local)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("partial file left behind: %v", err)
	}
	if res.ChunksReused+res.ChunksFetched != len(m.Chunks) || res.BytesReused+res.BytesFetched != m.Size {
		t.Errorf("reused %d chunks (%d bytes) + fetched %d (%d bytes), want %d chunks, %d bytes",
			res.ChunksReused, res.BytesReused, res.ChunksFetched, res.BytesFetched, len(m.Chunks), m.Size)
	}
}

// newChunks returns the distinct chunks of data, cut with p, that old, cut
// the same way, lacks.
func newChunks(t *testing.T, old, data []byte, p ChunkerParams) map[ChunkID]struct{} {
	t.Helper()
	have := chunkIDs(t, old, p)
	out := map[ChunkID]struct{}{}
	for id := range chunkIDs(t, data, p) {
		if _, ok := have[id]; !ok {
			out[id] = struct{}{}
		}
	}
	return out
}

func smallFixed() ChunkerParams {
	return ChunkerParams{Name: "fixed", Min: 16 << 10, Avg: 16 << 10, Max: 16 << 10}
}

func TestPullFresh(t *testing.T) {
	data := append(tarLikeData(10, 5<<20), randomData(11, 1<<20+77)...)
	data = append(data, data[:1<<20]...) // a repeated region: fetched once
	params := []ChunkerParams{smallRabin(), smallFixed()}
	for _, k := range ChunkerKinds() {
		params = append(params, k.Defaults)
	}
	for _, p := range params {
		t.Run(p.String(), func(t *testing.T) {
			checkGoroutines(t)
			r := newMemRemote()
			m := pushVersion(t, r, data, p)
			f := newMemFetcher(r)
			prog := &countingProgress{bytes: map[Stage]int64{}}
			local := filepath.Join(t.TempDir(), "f")
			res, err := Pull(context.Background(), f, m, local, PullOptions{Progress: prog, BatchChunks: 5})
			if err != nil {
				t.Fatal(err)
			}
			checkPulled(t, local, data, m, res)
			distinct := chunkIDs(t, data, p)
			if res.ChunksFetched != len(distinct) || len(f.served) != len(distinct) {
				t.Errorf("fetched %d chunks, served %d, file has %d distinct", res.ChunksFetched, len(f.served), len(distinct))
			}
			if id, twice := f.servedTwice(); twice {
				t.Errorf("chunk %s served twice", id)
			}
			if prog.bytes[StageFetched] != res.BytesFetched || prog.bytes[StageReused] != res.BytesReused {
				t.Errorf("progress %v, result fetched %d reused %d", prog.bytes, res.BytesFetched, res.BytesReused)
			}
			if res.Resumed != 0 || res.UpToDate {
				t.Errorf("fresh pull resumed %d bytes, up to date %v", res.Resumed, res.UpToDate)
			}
		})
	}
}

// irregularManifest describes data as a manifest labelled p whose chunks
// have sizes Scan cannot replay, as adaptive's do, and stores its chunks
// in r.
func irregularManifest(r *memRemote, data []byte, p ChunkerParams) *Manifest {
	m := &Manifest{Path: "f", Size: int64(len(data)), Mode: 0o640, ModTime: pullModTime, Chunker: p, Digests: digestsOf(data)}
	rng := newRand(uint64(len(data)))
	for off := 0; off < len(data); {
		n := min(1+rng.IntN(int(p.Max)), len(data)-off)
		chunk := data[off : off+n]
		id := SumChunk(chunk)
		r.chunks[id] = chunk
		m.Chunks = append(m.Chunks, ChunkRef{ID: id, Size: uint32(n)})
		off += n
	}
	return m
}

// TestPullOntoOldCopy pulls a new version onto the old one and checks that
// only the chunks the old copy lacks travel.
func TestPullOntoOldCopy(t *testing.T) {
	old := textData(20, 3<<20)
	edited := append([]byte(nil), old...)
	for _, at := range []int{100, 1 << 20, 2<<20 + 5000} {
		copy(edited[at:], "an edit in place")
	}
	changes := []struct {
		name string
		data []byte
	}{
		{"in place", edited},
		{"insertion", splice(old, 1<<20+3, 0, textData(21, 5000))},
		{"deletion", splice(old, 2<<20, 70000, nil)},
		{"appended", append(append([]byte(nil), old...), textData(22, 100000)...)},
	}
	for _, p := range []ChunkerParams{smallRabin(), smallFixed()} {
		for _, c := range changes {
			t.Run(p.Name+"/"+c.name, func(t *testing.T) {
				r := newMemRemote()
				m := pushVersion(t, r, c.data, p)
				local := writeFile(t, "f", old)
				f := newMemFetcher(r)
				res, err := Pull(context.Background(), f, m, local, PullOptions{})
				if err != nil {
					t.Fatal(err)
				}
				checkPulled(t, local, c.data, m, res)
				want := newChunks(t, old, c.data, p)
				if res.ChunksFetched != len(want) || len(f.served) != len(want) {
					t.Errorf("fetched %d chunks, served %d, want the %d the old copy lacks", res.ChunksFetched, len(f.served), len(want))
				}
				for id := range f.served {
					if _, ok := want[id]; !ok {
						t.Errorf("fetched chunk %s, which the old copy holds", id)
					}
				}
				t.Logf("fetched %d of %d chunks, %d of %d bytes", res.ChunksFetched, len(m.Chunks), res.BytesFetched, m.Size)
			})
		}
	}
	// A cut Scan cannot replay (adaptive's) still finds the chunks an
	// in-place edit left where they were.
	t.Run("irregular cut/in place", func(t *testing.T) {
		r := newMemRemote()
		m := irregularManifest(r, edited, smallFixed())
		if scanReproducesCut(m) {
			t.Fatal("irregular manifest taken for a replayable cut")
		}
		local := writeFile(t, "f", old)
		f := newMemFetcher(r)
		res, err := Pull(context.Background(), f, m, local, PullOptions{})
		if err != nil {
			t.Fatal(err)
		}
		checkPulled(t, local, edited, m, res)
		// Each edit touches one chunk, or two where it straddles a boundary.
		if res.ChunksFetched < 3 || res.ChunksFetched > 6 {
			t.Errorf("fetched %d of %d chunks for 3 edits in place", res.ChunksFetched, len(m.Chunks))
		}
	})
}

func TestPullUpToDate(t *testing.T) {
	data := textData(30, 1<<20)
	r := newMemRemote()
	m := pushVersion(t, r, data, smallRabin())
	local := writeFile(t, "f", data)
	partial := PartialPath(local)
	if err := os.WriteFile(partial, []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newMemFetcher(r)
	res, err := Pull(context.Background(), f, m, local, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkPulled(t, local, data, m, res)
	if !res.UpToDate || res.ChunksFetched != 0 || len(f.served) != 0 {
		t.Errorf("up to date %v, fetched %d chunks", res.UpToDate, res.ChunksFetched)
	}
}

func TestPullSeeds(t *testing.T) {
	p := smallRabin()
	v1 := textData(40, 2<<20)
	other := randomData(41, 1<<20)
	v2 := append(splice(v1, 500000, 1000, textData(42, 3000)), other...)
	r := newMemRemote()
	m := pushVersion(t, r, v2, p)
	seed1 := writeFile(t, "v1", v1)
	seed2 := writeFile(t, "other", other)
	local := filepath.Join(t.TempDir(), "f")
	f := newMemFetcher(r)
	// seed1 twice: a seed named again is read once.
	res, err := Pull(context.Background(), f, m, local, PullOptions{Seeds: []string{seed1, seed2, seed1}})
	if err != nil {
		t.Fatal(err)
	}
	checkPulled(t, local, v2, m, res)
	want := newChunks(t, append(append([]byte(nil), v1...), other...), v2, p)
	// Cut apart, the seeds lack the chunks across the seam between v1's
	// tail and other: a few more than want.
	if res.ChunksFetched > len(want)+3 || res.ChunksFetched == 0 {
		t.Errorf("fetched %d chunks, want about the %d the seeds lack", res.ChunksFetched, len(want))
	}
	if _, err := Pull(context.Background(), f, m, local+"2", PullOptions{Seeds: []string{local + ".absent"}}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("absent seed: %v", err)
	}
}

// TestPullSourceChanged changes the local file after it was cut: the chunks
// it no longer holds are fetched, not copied.
func TestPullSourceChanged(t *testing.T) {
	p := smallFixed()
	old := textData(50, 1<<20)
	data := append([]byte(nil), old...)
	copy(data[500000:], "new")
	r := newMemRemote()
	m := pushVersion(t, r, data, p)
	local := writeFile(t, "f", old)
	// The partial file holds the first chunk in place, so the resume check
	// reports progress after the local file was cut and before any chunk
	// is copied: that is when the local file changes.
	if err := os.WriteFile(PartialPath(local), data[:p.Avg], 0o600); err != nil {
		t.Fatal(err)
	}
	var scribble sync.Once
	prog := progressFunc(func(s Stage, n int64) {
		scribble.Do(func() {
			if err := os.WriteFile(local, make([]byte, len(old)), 0o600); err != nil {
				t.Error(err)
			}
		})
	})
	f := newMemFetcher(r)
	res, err := Pull(context.Background(), f, m, local, PullOptions{Progress: prog})
	if err != nil {
		t.Fatal(err)
	}
	checkPulled(t, local, data, m, res)
	if res.Resumed != int64(p.Avg) || res.ChunksFetched != len(m.Chunks)-1 {
		t.Errorf("resumed %d bytes, fetched %d of %d chunks; want %d bytes and all chunks but one", res.Resumed, res.ChunksFetched, len(m.Chunks), p.Avg)
	}
}

type progressFunc func(Stage, int64)

func (f progressFunc) Add(s Stage, n int64) { f(s, n) }

func TestPullResume(t *testing.T) {
	for _, p := range []ChunkerParams{smallRabin(), smallFixed()} {
		t.Run(p.Name, func(t *testing.T) {
			checkGoroutines(t)
			data := textData(60, 4<<20) // no zero runs: the partial file's holes hold no chunk
			old := data[:1<<20]         // an older, shorter copy
			r := newMemRemote()
			m := pushVersion(t, r, data, p)
			local := writeFile(t, "f", old)
			need := newChunks(t, old, data, p)

			broken := newMemFetcher(r)
			broken.failAfter = int64(len(need) / 2)
			_, err := Pull(context.Background(), broken, m, local, PullOptions{BatchChunks: 3})
			if !errors.Is(err, errLinkDown) {
				t.Fatalf("interrupted pull: %v", err)
			}
			if got, _ := os.ReadFile(local); !bytes.Equal(got, old) {
				t.Fatal("an interrupted pull changed the local file")
			}
			first := broken.accepted.Load()
			if first == 0 || first >= int64(len(need)) {
				t.Fatalf("first pull fetched %d of %d chunks", first, len(need))
			}

			f := newMemFetcher(r)
			res, err := Pull(context.Background(), f, m, local, PullOptions{})
			if err != nil {
				t.Fatal(err)
			}
			checkPulled(t, local, data, m, res)
			if res.ChunksFetched != len(need)-int(first) {
				t.Errorf("second pull fetched %d chunks, want %d - %d", res.ChunksFetched, len(need), first)
			}
			for id := range f.served {
				if broken.served[id] > 0 {
					t.Errorf("chunk %s fetched by both pulls", id)
				}
			}
			// Everything but what was fetched the second time was in place:
			// chunks copied or fetched the first time.
			var fetchedBefore int64
			for id := range broken.served {
				fetchedBefore += int64(len(r.chunks[id]))
			}
			if res.Resumed < fetchedBefore || res.Resumed+res.BytesFetched > m.Size {
				t.Errorf("resumed %d bytes, fetched %d; the first pull fetched %d", res.Resumed, res.BytesFetched, fetchedBefore)
			}
		})
	}
}

// TestPullRefusesFetcherLies checks that bytes that do not match their
// chunk are never written and leave the local file as it was.
func TestPullRefusesFetcherLies(t *testing.T) {
	data := textData(70, 1<<20)
	old := textData(71, 1<<20)
	r := newMemRemote()
	m := pushVersion(t, r, data, smallFixed())
	victim := m.Chunks[7].ID
	tests := []struct {
		name string
		set  func(f *memFetcher)
		want error
	}{
		{"flipped byte", func(f *memFetcher) {
			f.lie = func(ref ChunkRef, data []byte) []byte {
				if ref.ID == victim {
					data[3] ^= 1
				}
				return data
			}
		}, ErrChunkMismatch},
		{"short chunk", func(f *memFetcher) {
			f.lie = func(ref ChunkRef, data []byte) []byte {
				if ref.ID == victim {
					return data[:len(data)-1]
				}
				return data
			}
		}, ErrChunkMismatch},
		{"chunk left out", func(f *memFetcher) { f.skip = victim }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local := writeFile(t, "f", old)
			f := newMemFetcher(r)
			tt.set(f)
			_, err := Pull(context.Background(), f, m, local, PullOptions{})
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), victim.String()) {
				t.Fatalf("got %v, want an error naming chunk %s", err, victim)
			}
			if got, _ := os.ReadFile(local); !bytes.Equal(got, old) {
				t.Fatal("local file changed")
			}
			part, err := os.ReadFile(PartialPath(local))
			if err != nil {
				t.Fatal(err)
			}
			if off := 7 * int(smallFixed().Avg); !bytes.Equal(part[off:off+8], make([]byte, 8)) {
				t.Error("the refused chunk was written")
			}
		})
	}
}

func TestPullDigestMismatch(t *testing.T) {
	data := textData(80, 1<<20)
	old := textData(81, 1<<20)
	r := newMemRemote()
	good := pushVersion(t, r, data, smallRabin())
	for name, lie := range map[string]func(m *Manifest){
		"blake3": func(m *Manifest) { m.Digests.BLAKE3[0] ^= 1 },
		"md5":    func(m *Manifest) { m.Digests.MD5[0] ^= 1 },
	} {
		for _, fresh := range []bool{false, true} {
			t.Run(name+map[bool]string{false: "/onto old copy", true: "/fresh"}[fresh], func(t *testing.T) {
				m := *good
				lie(&m)
				dir := t.TempDir()
				local := filepath.Join(dir, "f")
				if !fresh {
					if err := os.WriteFile(local, old, 0o600); err != nil {
						t.Fatal(err)
					}
				}
				_, err := Pull(context.Background(), newMemFetcher(r), &m, local, PullOptions{})
				if !errors.Is(err, ErrDigestMismatch) {
					t.Fatalf("got %v, want ErrDigestMismatch", err)
				}
				got, err := os.ReadFile(local)
				if fresh && !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("a file that failed verification appeared: %v", err)
				}
				if !fresh && !bytes.Equal(got, old) {
					t.Fatal("local file changed")
				}
			})
		}
	}
}

func TestPullRefusesNonRegular(t *testing.T) {
	r := newMemRemote()
	m := pushVersion(t, r, textData(90, 100000), smallRabin())
	tests := map[string]func(t *testing.T, local string){
		"directory": func(t *testing.T, local string) {
			if err := os.Mkdir(local, 0o755); err != nil {
				t.Fatal(err)
			}
		},
		"symlink": func(t *testing.T, local string) {
			target := writeFile(t, "target", []byte("target"))
			if err := os.Symlink(target, local); err != nil {
				t.Skip(err)
			}
		},
	}
	for name, setup := range tests {
		t.Run(name, func(t *testing.T) {
			local := filepath.Join(t.TempDir(), "f")
			setup(t, local)
			before, _ := os.Lstat(local)
			f := newMemFetcher(r)
			_, err := Pull(context.Background(), f, m, local, PullOptions{})
			if err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Fatalf("got %v, want a refusal", err)
			}
			after, _ := os.Lstat(local)
			if after == nil || after.Mode() != before.Mode() || !os.SameFile(before, after) {
				t.Error("local path changed")
			}
			if len(f.served) != 0 {
				t.Error("refused pull fetched chunks")
			}
			if _, err := os.Lstat(PartialPath(local)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("refused pull created a partial file: %v", err)
			}
		})
	}
}

func TestPullEmpty(t *testing.T) {
	r := newMemRemote()
	m := pushVersion(t, r, nil, smallRabin())
	for name, old := range map[string][]byte{"fresh": nil, "onto old copy": textData(100, 5000)} {
		t.Run(name, func(t *testing.T) {
			local := filepath.Join(t.TempDir(), "f")
			if old != nil {
				os.WriteFile(local, old, 0o600)
			}
			res, err := Pull(context.Background(), newMemFetcher(r), m, local, PullOptions{})
			if err != nil {
				t.Fatal(err)
			}
			checkPulled(t, local, nil, m, res)
		})
	}
}

// TestPullRepeatedChunk pulls a file most of whose chunks are one chunk of
// zeros: it is fetched once and written everywhere.
func TestPullRepeatedChunk(t *testing.T) {
	p := smallFixed()
	data := append(make([]byte, 40*int(p.Avg)), textData(110, 3*int(p.Avg))...)
	data = append(data, make([]byte, 10*int(p.Avg))...)
	r := newMemRemote()
	m := pushVersion(t, r, data, p)
	f := newMemFetcher(r)
	local := filepath.Join(t.TempDir(), "f")
	res, err := Pull(context.Background(), f, m, local, PullOptions{BatchChunks: 2})
	if err != nil {
		t.Fatal(err)
	}
	checkPulled(t, local, data, m, res)
	zero := SumChunk(make([]byte, p.Avg))
	if f.served[zero] != 1 || res.ChunksFetched != 4 || res.ChunksReused != 49 {
		t.Errorf("zero chunk served %d times; fetched %d chunks, reused %d; want 1, 4, 49", f.served[zero], res.ChunksFetched, res.ChunksReused)
	}
}

func TestPartialPath(t *testing.T) {
	long := strings.Repeat("n", 250)
	tests := []struct{ local, want string }{
		{"f", ".f" + PartialSuffix},
		{"dir/disk.img", filepath.Join("dir", ".disk.img"+PartialSuffix)},
		{"dir/", ".dir" + PartialSuffix},
		{"/a/" + long, "/a/." + SumChunk([]byte(long)).String()[:32] + PartialSuffix},
	}
	for _, tt := range tests {
		if got := PartialPath(tt.local); got != tt.want {
			t.Errorf("PartialPath(%q) = %q, want %q", tt.local, got, tt.want)
		}
	}
}

func TestPullRefusesBadManifest(t *testing.T) {
	r := newMemRemote()
	good := pushVersion(t, r, textData(120, 100000), smallFixed())
	twoSizes := *good
	twoSizes.Chunks = append([]ChunkRef(nil), good.Chunks...)
	last := len(twoSizes.Chunks) - 1
	twoSizes.Chunks[last].ID = twoSizes.Chunks[0].ID // same ID, the last chunk's shorter size
	invalid := *good
	invalid.Size++
	for name, m := range map[string]*Manifest{"nil": nil, "invalid": &invalid, "one ID, two sizes": &twoSizes} {
		t.Run(name, func(t *testing.T) {
			local := filepath.Join(t.TempDir(), "f")
			_, err := Pull(context.Background(), newMemFetcher(r), m, local, PullOptions{})
			if err == nil || (m != nil && !errors.Is(err, ErrMalformed)) {
				t.Fatalf("got %v, want a refusal", err)
			}
			if _, err := os.Lstat(PartialPath(local)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("refused pull created a partial file: %v", err)
			}
		})
	}
}
