package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/zeebo/blake3"

	"github.com/chunksync/chunksync/transport"
)

// demoOptions are the flags of the demo command.
type demoOptions struct {
	Dir   string
	Size  byteSize
	Seed  uint64
	Quiet bool
}

// newDemoCommand returns the demo command.
func newDemoCommand() *cobra.Command {
	opts := demoOptions{Size: 256 << 20, Seed: 1}
	cmd := &cobra.Command{
		Use:   "demo [--dir DIR] [--size SIZE]",
		Short: "Show a push and an incremental re-push on sample data, on built-in defaults",
		Long: `Demo runs the whole main job in one command: it starts a server in-process on
a free loopback port with its data directory in DIR (a temporary directory,
removed afterwards, unless --dir is given), creates a token, writes a sample
file (seeded pseudo-random data with compressible and repeated regions),
pushes it, changes a few small parts of it (overwrites in place and an
insertion), pushes it again, and compares what each push sent. Finally it
checks that the server's copy under DIR/files has the same BLAKE3 and MD5 as
the local file and is identical byte for byte.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDemo(cmd.Context(), opts, streamsOf(cmd))
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Dir, "dir", "", "keep the server's data and the sample file in this directory (default: a temporary one)")
	f.Var(&opts.Size, "size", "size of the sample file, like 256MiB or 1G (default 256MiB)")
	f.Uint64Var(&opts.Seed, "seed", 1, "seed of the sample data")
	f.BoolVarP(&opts.Quiet, "quiet", "q", false, "no progress bars")
	return cmd
}

// newDemoToken creates the demo's token, named demo, or demo-2, demo-3 and
// so on when a --dir kept from earlier runs holds those names already.
func newDemoToken(dir string) (string, error) {
	name := "demo"
	for i := 2; ; i++ {
		token, err := transport.NewToken(dir, name)
		if !errors.Is(err, transport.ErrTokenNameTaken) {
			return token, err
		}
		name = fmt.Sprintf("demo-%d", i)
	}
}

// runDemo runs the demo; see the command's help.
func runDemo(ctx context.Context, opts demoOptions, st ioStreams) (err error) {
	if opts.Size <= 0 {
		return usagef("--size %d: need a positive size", opts.Size)
	}
	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "chunksync-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}

	srv, err := transport.NewServer(transport.ServerConfig{DataDir: dir, Listen: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	srvCtx, stopServer := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(srvCtx); err != nil {
			fmt.Fprintf(st.Err, "chunksync: demo server: %v\n", err)
		}
	})
	defer func() {
		stopServer()
		wg.Wait()
		err = errors.Join(err, srv.Close())
	}()
	token, err := newDemoToken(dir)
	if err != nil {
		return err
	}
	server := srv.Addr().String()
	fmt.Fprintf(st.Out, "server on %s, data in %s, fingerprint %s\n", server, dir, srv.Fingerprint())

	local := filepath.Join(dir, "local", "sample.bin")
	remotePath := "sample.bin"
	if err := writeSample(ctx, local, int64(opts.Size), opts.Seed); err != nil {
		return err
	}
	fmt.Fprintf(st.Out, "wrote %s: %s of seeded sample data\n", local, formatBytes(int64(opts.Size)))

	how, err := autoStrategy(local)
	if err != nil {
		return err
	}
	// The client remembers what it pushed, as the command line does, so
	// that the second push sends deltas against the first.
	conn := connectOptions{Server: server, Token: token, Fingerprint: srv.Fingerprint(), CacheDir: filepath.Join(dir, "cache")}
	pushOnce := func() (pushReport, error) {
		client, err := conn.dial(ctx, dataOptions{}, 0, st.Err)
		if err != nil {
			return pushReport{}, err
		}
		defer client.Close()
		return pushFile(ctx, client, server, local, remotePath, how, st.Err, !opts.Quiet)
	}

	first, err := pushOnce()
	if err != nil {
		return err
	}
	fmt.Fprintf(st.Out, "first push: %d chunks sent in %.2f s\n", first.ChunksSent, first.Seconds)
	change, err := modifySample(local, opts.Seed)
	if err != nil {
		return err
	}
	fmt.Fprintf(st.Out, "changed the sample: %s\n", change)
	second, err := pushOnce()
	if err != nil {
		return err
	}
	fmt.Fprintf(st.Out, "second push: %d chunks sent in %.2f s\n\n", second.ChunksSent, second.Seconds)

	tw := tabwriter.NewWriter(st.Out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\tfirst push\tsecond push\t\n")
	row := func(name string, f func(pushReport) string) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", name, f(first), f(second))
	}
	row("file size", func(r pushReport) string { return formatBytes(r.Size) })
	row("chunks", func(r pushReport) string { return fmt.Sprint(r.Chunks) })
	row("chunks sent", func(r pushReport) string { return fmt.Sprint(r.ChunksSent) })
	row("chunk data sent", func(r pushReport) string { return formatBytes(r.RawBytesSent) })
	row("bytes sent (zstd or delta)", func(r pushReport) string { return formatBytes(r.BytesSent) })
	row("wire bytes sent", func(r pushReport) string { return formatBytes(int64(r.WireBytesSent)) })
	row("wire bytes received", func(r pushReport) string { return formatBytes(int64(r.WireBytesReceived)) })
	row("seconds", func(r pushReport) string { return fmt.Sprintf("%.2f", r.Seconds) })
	row("throughput", func(r pushReport) string { return formatRate(r.Size, r.Seconds) })
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(st.Out, "chunker: %s\n\n", second.Chunker)

	served := filepath.Join(dir, "files", filepath.FromSlash(remotePath))
	b3, sum, err := compareFiles(local, served)
	if err != nil {
		return err
	}
	mark := func(got, want string) string {
		if got == want {
			return "matches the local file"
		}
		return "DIFFERS from the local file's " + want
	}
	fmt.Fprintf(st.Out, "server copy %s\n  blake3 %s (%s)\n  md5    %s (%s)\n  identical to %s byte for byte\n",
		served, b3, mark(b3, second.BLAKE3), sum, mark(sum, second.MD5), local)
	if b3 != second.BLAKE3 || sum != second.MD5 {
		return fmt.Errorf("server copy %s: digests differ from the pushed file's", served)
	}
	if opts.Dir == "" {
		fmt.Fprintf(st.Out, "removing %s (keep it with --dir)\n", dir)
	}
	return nil
}

// sampleRegion is a stretch of the sample file; regenerating a region from
// the same fields yields the same bytes, which is how the sample repeats
// earlier regions without keeping them in memory.
type sampleRegion struct {
	text bool
	seed uint64
	size int64
}

// writeSample writes size bytes of sample data to path: regions of 1 to 8
// MiB, about half random, a quarter text-like (compressible), a quarter
// repeating an earlier region (so that chunks repeat).
func writeSample(ctx context.Context, path string, size int64, seed uint64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	var done []sampleRegion
	for left := size; left > 0; {
		if err := ctx.Err(); err != nil {
			f.Close()
			return err
		}
		r := sampleRegion{seed: rng.Uint64(), size: 1<<20 + rng.Int64N(7<<20), text: rng.IntN(4) == 0}
		if len(done) > 0 && rng.IntN(4) == 0 {
			r = done[rng.IntN(len(done))]
		}
		r.size = min(r.size, left)
		done = append(done, r)
		if err := r.write(w); err != nil {
			f.Close()
			return fmt.Errorf("write sample %s: %w", path, err)
		}
		left -= r.size
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write sample %s: %w", path, err)
	}
	return f.Close()
}

// sampleWords are what text regions are made of.
var sampleWords = []string{
	"chunk", "sync", "server", "client", "block", "image", "version", "delta",
	"stream", "hash", "the", "of", "and", "a", "large", "file", "changes", "over",
	"time", "only", "what", "changed", "is", "sent", "again", "quic", "store",
}

// write writes the region's bytes to w.
func (r sampleRegion) write(w io.Writer) error {
	left := r.size
	if !r.text {
		_, err := io.CopyN(w, rand.NewChaCha8(chachaSeed(r.seed)), left)
		return err
	}
	rng := rand.New(rand.NewPCG(r.seed, 0x7e47))
	var line bytes.Buffer
	for left > 0 {
		line.Reset()
		fmt.Fprintf(&line, "%08d ", rng.IntN(100000000))
		for n := 4 + rng.IntN(10); n > 0; n-- {
			line.WriteString(sampleWords[rng.IntN(len(sampleWords))])
			line.WriteByte(' ')
		}
		line.WriteByte('\n')
		b := line.Bytes()[:min(int64(line.Len()), left)]
		if _, err := w.Write(b); err != nil {
			return err
		}
		left -= int64(len(b))
	}
	return nil
}

// chachaSeed spreads a 64-bit seed into a ChaCha8 key.
func chachaSeed(seed uint64) [32]byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return s
}

// modifySample changes the file at path a little, the way files that are
// re-synced change: three 4 KiB overwrites in place and a 1000-byte
// insertion. It streams the file into a new one and renames it over.
func modifySample(path string, seed uint64) (string, error) {
	in, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", err
	}
	size := fi.Size()
	rng := rand.New(rand.NewPCG(seed, 0xc4a9))
	patch := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	type edit struct {
		at     int64
		data   []byte
		insert bool
	}
	edits := []edit{
		{at: size / 5, data: patch(4096)},
		{at: size / 3, data: patch(1000), insert: true},
		{at: size / 2, data: patch(4096)},
		{at: size * 4 / 5, data: patch(4096)},
	}
	tmp := path + ".new"
	out, err := os.Create(tmp)
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp)
	w := bufio.NewWriterSize(out, 1<<20)
	var pos int64
	for _, e := range edits {
		if e.at < pos {
			continue // a tiny sample: edits overlap
		}
		if _, err := io.CopyN(w, in, e.at-pos); err != nil {
			out.Close()
			return "", err
		}
		pos = e.at
		if _, err := w.Write(e.data); err != nil {
			out.Close()
			return "", err
		}
		if !e.insert {
			skip := min(int64(len(e.data)), size-pos)
			if _, err := in.Seek(skip, io.SeekCurrent); err != nil {
				out.Close()
				return "", err
			}
			pos += skip
		}
	}
	if _, err := io.Copy(w, in); err != nil {
		out.Close()
		return "", err
	}
	if err := w.Flush(); err != nil {
		out.Close()
		return "", err
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", err
	}
	return "overwrote 3 × 4 KiB in place (at 1/5, 1/2 and 4/5 of the file) and inserted 1000 bytes at 1/3", nil
}

// compareFiles checks that the files at a and b hold the same bytes and
// returns b's BLAKE3 and MD5 in hex. It hashes on its own rather than
// through engine, so that it checks engine's work instead of repeating it.
func compareFiles(a, b string) (b3, sum string, err error) {
	fa, err := os.Open(a)
	if err != nil {
		return "", "", err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return "", "", err
	}
	defer fb.Close()
	hb3, hmd5 := blake3.New(), md5.New()
	hashes := io.MultiWriter(hb3, hmd5)
	bufA, bufB := make([]byte, 1<<20), make([]byte, 1<<20)
	var off int64
	for {
		na, errA := io.ReadFull(fa, bufA)
		nb, errB := io.ReadFull(fb, bufB)
		hashes.Write(bufB[:nb])
		if !bytes.Equal(bufA[:na], bufB[:nb]) {
			i := 0
			for i < min(na, nb) && bufA[i] == bufB[i] {
				i++
			}
			return "", "", fmt.Errorf("%s and %s differ at byte %d", a, b, off+int64(i))
		}
		off += int64(na)
		endA, endB := isEnd(errA), isEnd(errB)
		if errA != nil && !endA {
			return "", "", errA
		}
		if errB != nil && !endB {
			return "", "", errB
		}
		if endA || endB {
			break
		}
	}
	return hexSum(hb3), hexSum(hmd5), nil
}

// isEnd reports whether a read stopped at the end of the file.
func isEnd(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// hexSum returns h's sum in hexadecimal.
func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }
