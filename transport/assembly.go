package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// Assembling during the push.
//
// A commit that assembles the whole file only once the last chunk is
// stored makes the client wait for a pass over the file: reading every
// chunk, writing the file, BLAKE3 and MD5, and syncing it. Through an
// emulated 400 Mbit/s, 200 ms link that was 2.0 s of a 16 s push of 512
// MiB. So the server assembles a pushed file while its chunks arrive: the
// missing requests list the file's chunks in order, and a writer per
// session appends each listed chunk to a temporary file as soon as the
// store holds it, hashing the content and the list as it goes. The commit
// then writes what is left, checks that the chunks written are the
// manifest's and that the content has its digests, and puts the file in
// place as before. Anything unexpected (a list that skips or goes back, a
// failed write, a manifest that is not the list) leaves the commit to
// assemble the file from the store, as it always could.

// maxAssemblies bounds the files assembled at once.
const maxAssemblies = 4

// maxAssemblyQueue bounds the chunks listed to an assembly and not yet
// written. A client lists chunks a batch or two ahead of the ones it
// sends; one that lists far more than it sends loses the assembly.
const maxAssemblyQueue = 1 << 16

// assemblySync is how many bytes an assembly writes between syncs, so
// that the commit's sync finds little left to write back.
const assemblySync = 64 << 20

// assemblyPoll is how often a waiting assembly looks for its next chunk
// without being told one was stored: a chunk can reach the store other
// than through the session's data streams.
const assemblyPoll = time.Second

// assemblies are the files the server assembles during their pushes, by
// session. Serve stops them all when it returns.
type assemblies struct {
	s       *Server
	mu      sync.Mutex
	running map[string]*assembly
	stopped bool
}

// assembly is one file assembled during its push, into tmp under the
// files root, by one writer goroutine.
type assembly struct {
	files   *os.Root
	tmp     string
	f       *os.File
	w       *bufio.Writer
	sum     *engine.Assembly
	release func()
	cancel  context.CancelFunc
	wake    chan struct{}
	done    chan struct{} // closed when the writer returns

	mu        sync.Mutex
	queue     []engine.ChunkRef // listed, not yet written
	listed    int
	finishing bool  // no more chunks will be listed
	err       error // why the writer stopped, once done is closed
}

// list hands the chunks first, first+1, … of session sess's file, as a
// missing request listed them, to its assembly. A list from the first
// chunk starts an assembly (again); one that does not continue where the
// last one ended stops it.
func (as *assemblies) list(sess index.Session, first int, refs []engine.ChunkRef) {
	as.mu.Lock()
	a := as.running[sess.ID]
	if a != nil && first != 0 && a.add(first, refs) {
		as.mu.Unlock()
		return
	}
	delete(as.running, sess.ID)
	var err error
	if first == 0 && !as.stopped && len(as.running) < maxAssemblies {
		var started *assembly
		if started, err = as.start(sess); err == nil {
			as.running[sess.ID] = started
			started.add(first, refs)
		}
	}
	as.mu.Unlock()
	if a != nil {
		a.abort()
	}
	if err != nil {
		as.s.log.Warn("no assembly during the push", "session", sess.ID, "path", sess.Spec.Path, "err", err)
	}
}

// start opens the temporary file of sess's path and starts its writer; as.mu
// is held.
func (as *assemblies) start(sess index.Session) (*assembly, error) {
	// The file and the chunks it is made of must fit side by side. Where
	// they may not, the chunks come first and the commit assembles the
	// file, as it must anyway: an assembly would take the space that the
	// chunks need.
	if free, ok := freeSpace(as.s.cfg.FilesDir); ok && free < 2*sess.Spec.Size {
		return nil, fmt.Errorf("%d MiB free under the files root, less than twice the file's %d MiB", free>>20, sess.Spec.Size>>20)
	}
	largest := int64(sess.Spec.Chunker.Max)
	if largest == 0 {
		largest = engine.MaxChunkSize
	}
	need := assembleBuffer + largest + maxAssemblyQueue*chunkRefMemory
	if !as.s.memory.TryAcquire(need) {
		return nil, errors.New("memory budget in use")
	}
	tmp, f, err := as.s.createTemp(sess.Spec.Path)
	if err != nil {
		as.s.memory.Release(need)
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := bufio.NewWriterSize(f, assembleBuffer)
	a := &assembly{
		files: as.s.files, tmp: tmp, f: f, w: w,
		sum:     engine.NewAssembly(w),
		release: func() { as.s.memory.Release(need) },
		cancel:  cancel,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	go a.run(ctx, as.s.chunks)
	return a, nil
}

// stored tells session id's assembly that a chunk was stored.
func (as *assemblies) stored(id string) {
	as.mu.Lock()
	a := as.running[id]
	as.mu.Unlock()
	if a != nil {
		a.signal()
	}
}

// take removes session id's assembly and returns it, nil when there is
// none.
func (as *assemblies) take(id string) *assembly {
	as.mu.Lock()
	defer as.mu.Unlock()
	a := as.running[id]
	delete(as.running, id)
	return a
}

// drop stops session id's assembly, if any, and removes its file.
func (as *assemblies) drop(id string) {
	if a := as.take(id); a != nil {
		a.abort()
	}
}

// stop stops every assembly and starts no more.
func (as *assemblies) stop() {
	as.mu.Lock()
	as.stopped = true
	as.mu.Unlock()
	as.dropAll()
}

// dropAll stops every assembly and removes their files.
func (as *assemblies) dropAll() {
	as.mu.Lock()
	running := as.running
	as.running = make(map[string]*assembly)
	as.mu.Unlock()
	for _, a := range running {
		a.abort()
	}
}

// add queues refs, listed from chunk first on, and reports whether they
// continue the list.
func (a *assembly) add(first int, refs []engine.ChunkRef) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if first != a.listed || len(a.queue)+len(refs) > maxAssemblyQueue {
		return false
	}
	a.queue = append(a.queue, refs...)
	a.listed += len(refs)
	a.signal()
	return true
}

func (a *assembly) signal() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *assembly) run(ctx context.Context, src engine.ChunkSource) {
	defer close(a.done)
	err := a.write(ctx, src)
	if err != nil {
		// Free the disk at once; abort removes nothing more.
		a.f.Close()
		a.files.Remove(a.tmp)
	}
	a.mu.Lock()
	a.err = err
	a.mu.Unlock()
}

// write appends each queued chunk once the store holds it, until every
// chunk is written and no more will be listed.
func (a *assembly) write(ctx context.Context, src engine.ChunkSource) error {
	poll := time.NewTicker(assemblyPoll)
	defer poll.Stop()
	var buf []byte
	unsynced := 0
	for {
		a.mu.Lock()
		finishing, queued := a.finishing, len(a.queue) > 0
		var ref engine.ChunkRef
		if queued {
			ref = a.queue[0]
		}
		a.mu.Unlock()
		if !queued && finishing {
			return nil
		}
		if queued {
			data, err := src.Get(ctx, ref.ID, buf[:0])
			switch {
			case err == nil:
				buf = data
				if err := a.sum.Add(ref, data); err != nil {
					return err
				}
				a.mu.Lock()
				a.queue = a.queue[1:]
				a.mu.Unlock()
				if unsynced += len(data); unsynced >= assemblySync {
					unsynced = 0
					if err := a.w.Flush(); err != nil {
						return err
					}
					if err := a.f.Sync(); err != nil {
						return err
					}
				}
				continue
			case !errors.Is(err, index.ErrChunkMissing) || finishing:
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.wake:
		case <-poll.C:
		}
	}
}

// finish writes the chunks left, once the store holds every chunk of m,
// and checks the file against m. It returns the file, flushed, for the
// commit to put in place, or an error after which the assembly is gone:
// the commit assembles the file anew.
func (a *assembly) finish(ctx context.Context, m *engine.Manifest) (string, *os.File, error) {
	a.mu.Lock()
	a.finishing = true
	a.mu.Unlock()
	a.signal()
	var err error
	select {
	case <-a.done:
		err = a.err
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err == nil {
		err = a.w.Flush()
	}
	if err == nil {
		err = a.sum.Check(m)
	}
	if err != nil {
		a.abort()
		return "", nil, err
	}
	a.release()
	return a.tmp, a.f, nil
}

// abort stops the writer, removes the file and frees the memory.
func (a *assembly) abort() {
	a.cancel()
	<-a.done
	a.f.Close()
	a.files.Remove(a.tmp)
	a.release()
}
