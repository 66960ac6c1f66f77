package engine

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/zeebo/blake3"
)

// checkGoroutines fails t if goroutines started during the test outlive it.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		// A goroutine that has returned from its function is counted
		// until it has run its last deferred calls, which under the race
		// detector on a loaded machine can take a while: poll until a
		// generous deadline.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if runtime.NumGoroutine() <= before {
				return
			}
			runtime.Gosched()
			time.Sleep(time.Millisecond)
		}
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
	})
}

func TestScan(t *testing.T) {
	small := smallRabin()
	inputs := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"one byte", []byte{7}},
		{"one block", randomData(1, scanBlockSize)},
		{"random", randomData(2, 9<<20+123)},
		{"tarlike", tarLikeData(3, 24<<20)},
	}
	params := []ChunkerParams{defaultParams(t, "rabin"), defaultParams(t, "fixed"), small}
	for _, in := range inputs {
		for _, p := range params {
			t.Run(fmt.Sprintf("%s/%s", in.name, p), func(t *testing.T) {
				checkGoroutines(t)
				var got bytes.Buffer
				var want []int
				var mu sync.Mutex
				var wg sync.WaitGroup
				next := 0
				// The reference cut, without Scan.
				if len(in.data) > 0 {
					want = cutSizes(t, bytes.NewReader(in.data), p, in.data)
				}
				d, err := Scan(context.Background(), &shortReader{bytes.NewReader(in.data), newRand(4), 3 << 20}, p, func(c ScannedChunk) error {
					if c.Index != next {
						return fmt.Errorf("chunk %d arrived as number %d", c.Index, next)
					}
					if c.Offset != int64(got.Len()) {
						return fmt.Errorf("chunk %d at offset %d, want %d", c.Index, c.Offset, got.Len())
					}
					if int(c.Ref.Size) != len(c.Data) || c.Ref.ID != SumChunk(c.Data) {
						return fmt.Errorf("chunk %d: ref %v does not describe its %d bytes", c.Index, c.Ref, len(c.Data))
					}
					if c.Index >= len(want) || len(c.Data) != want[c.Index] {
						return fmt.Errorf("chunk %d: %d bytes, the chunker cuts %v", c.Index, len(c.Data), want)
					}
					next++
					got.Write(c.Data)
					// Hand the data back from another goroutine, as
					// a push does after sending it.
					wg.Add(1)
					go func() {
						defer wg.Done()
						mu.Lock()
						defer mu.Unlock()
						ReleaseChunkData(c.Data)
					}()
					return nil
				})
				wg.Wait()
				if err != nil {
					t.Fatal(err)
				}
				if next != len(want) {
					t.Errorf("%d chunks emitted, want %d", next, len(want))
				}
				if !bytes.Equal(got.Bytes(), in.data) {
					t.Error("chunks do not put the input back together")
				}
				if d.MD5 != md5.Sum(in.data) {
					t.Errorf("MD5 %x, want %x", d.MD5, md5.Sum(in.data))
				}
				if d.BLAKE3 != blake3.Sum256(in.data) {
					t.Errorf("BLAKE3 %x, want %x", d.BLAKE3, blake3.Sum256(in.data))
				}
			})
		}
	}
}

func TestScanStops(t *testing.T) {
	data := randomData(10, 32<<20)
	p := smallRabin()
	errEmit := errors.New("remote went away")
	errRead := errors.New("disk on fire")
	tests := []struct {
		name string
		r    io.Reader
		// stop is called from emit for every chunk; cancel ends ctx.
		stop func(c ScannedChunk, cancel func()) error
		want error
	}{
		{"cancel mid-stream", bytes.NewReader(data), func(c ScannedChunk, cancel func()) error {
			if c.Index == 100 {
				cancel()
			}
			return nil
		}, context.Canceled},
		{"cancel at first chunk", bytes.NewReader(data), func(c ScannedChunk, cancel func()) error {
			cancel()
			return nil
		}, context.Canceled},
		{"emit fails", bytes.NewReader(data), func(c ScannedChunk, cancel func()) error {
			if c.Index == 50 {
				return errEmit
			}
			return nil
		}, errEmit},
		{"read fails", io.MultiReader(bytes.NewReader(data[:5<<20+3]), iotest.ErrReader(errRead)), func(ScannedChunk, func()) error {
			return nil
		}, errRead},
		{"emit blocks until cancelled", bytes.NewReader(data), func(c ScannedChunk, cancel func()) error {
			if c.Index == 10 {
				done := make(chan struct{})
				go func() { cancel(); close(done) }()
				<-done
				return context.Canceled
			}
			return nil
		}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			after := 0
			stopped := false
			_, err := Scan(ctx, tt.r, p, func(c ScannedChunk) error {
				defer ReleaseChunkData(c.Data)
				if stopped {
					after++
				}
				err := tt.stop(c, cancel)
				if err != nil || ctx.Err() != nil {
					stopped = true
				}
				return err
			})
			if !errors.Is(err, tt.want) {
				t.Fatalf("Scan = %v, want %v", err, tt.want)
			}
			if after > 0 {
				t.Errorf("emit called %d times after it failed", after)
			}
		})
	}
	t.Run("bad params", func(t *testing.T) {
		_, err := Scan(context.Background(), bytes.NewReader(nil), ChunkerParams{Name: "rabin"}, nil)
		if err == nil {
			t.Fatal("Scan accepted invalid parameters")
		}
	})
}

// TestScanMemory checks that Scan's memory does not follow the stream's
// size when emit hands every chunk back.
func TestScanMemory(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop buffers")
	}
	p := defaultParams(t, "rabin")
	scan := func(size int64) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := Scan(context.Background(), io.LimitReader(zeroReader{}, size), p, func(c ScannedChunk) error {
			ReleaseChunkData(c.Data)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	scan(16 << 20) // fill the pools
	small, large := scan(16<<20), scan(256<<20)
	t.Logf("allocated %d KiB for 16 MiB, %d KiB for 256 MiB", small>>10, large>>10)
	if large > 2*small+(16<<20) {
		t.Errorf("scanning 16x more allocates %d KiB instead of %d KiB", large>>10, small>>10)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestChunkPool(t *testing.T) {
	for _, n := range []int{1, 4095, 4096, 4097, 1 << 20, MaxChunkSize} {
		b := getChunkData(n)
		if len(b) != n || cap(b)&(cap(b)-1) != 0 || cap(b) < n {
			t.Errorf("getChunkData(%d): len %d cap %d", n, len(b), cap(b))
		}
		ReleaseChunkData(b)
	}
	// Foreign slices are ignored, not pooled.
	ReleaseChunkData(nil)
	ReleaseChunkData(make([]byte, 5000))
	if allocs := testing.AllocsPerRun(100, func() { ReleaseChunkData(getChunkData(300 << 10)) }); allocs > 0 {
		t.Errorf("a get and release allocate %v times", allocs)
	}
}
