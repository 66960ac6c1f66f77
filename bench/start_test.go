//go:build !race

// A push's first round trips through a long link. They are counted in
// time, so this builds without the race detector (!race), whose slowness
// would count as round trips, and .ci/test runs it on its own.

package bench

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/transport"
)

// openTimer is a remote that notes when its upload was opened.
type openTimer struct {
	*transport.Client
	opened time.Time
}

func (r *openTimer) OpenUpload(ctx context.Context, spec engine.UploadSpec) (engine.Upload, error) {
	r.opened = time.Now()
	return r.Client.OpenUpload(ctx, spec)
}

// firstStored notes when the first chunk was acknowledged.
type firstStored struct {
	once sync.Once
	at   time.Time
}

func (f *firstStored) Add(stage engine.Stage, _ int64) {
	if stage == engine.StageStored {
		f.once.Do(func() { f.at = time.Now() })
	}
}

// TestPushStartsInThreeRoundTrips: through 400 ms, a bulk push of a new
// file has its first chunk acknowledged three round trips after its dial
// starts: the QUIC handshake, the hello with the open that asks about the
// first chunks behind it, the chunk. Not four (the client waiting for the
// hello's reply before the open), nor five (an open, then a missing
// request). Its data connections are up within one round trip and a half
// of Dial's return, for their hellos are not waited for either.
func TestPushStartsInThreeRoundTrips(t *testing.T) {
	p := TransferProfile{Rate: 400e6, RTT: 400 * time.Millisecond}
	env, stop, err := startTransferEnv(t.Context(), t.TempDir(), p, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	// Written before the clock starts: on a loaded machine writing 64 MiB
	// took a tenth of a second.
	file := transferFile(t, 64<<20)
	dialled := time.Now()
	c, err := env.dial(t.Context(), TransferSpec{Streams: 8, FEC: transport.FECOff})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := &openTimer{Client: c}
	first := &firstStored{}
	conns := make(chan int, 1)
	go func() {
		// Sampled 1.5 round trips after the push starts: the open comes
		// right after, and the dials with it.
		time.Sleep(3 * p.RTT / 2)
		conns <- c.Stats().Connections
	}()
	// Chunks that fit in a connection's first window (32 packets): a
	// larger one would take round trips of slow start to arrive.
	small := engine.ChunkerParams{Name: "fixed", Min: 16 << 10, Avg: 16 << 10, Max: 16 << 10}
	if _, err := engine.Push(t.Context(), r, file, "f.bin", engine.PushOptions{Chunker: small, Progress: first}); err != nil {
		t.Fatal(err)
	}
	took, afterOpen := first.at.Sub(dialled), first.at.Sub(r.opened)
	up := <-conns
	t.Logf("first chunk acknowledged %v after the dial started, %v after the open (round trip %v); %d connections up at 1.5 round trips",
		took.Round(time.Millisecond), afterOpen.Round(time.Millisecond), p.RTT, up)
	if took > 7*p.RTT/2 {
		t.Errorf("first chunk acknowledged %v after the dial started, more than 3.5 round trips of %v", took, p.RTT)
	}
	if up != 8 {
		t.Errorf("%d connections up 1.5 round trips into the push, want 8", up)
	}
}
