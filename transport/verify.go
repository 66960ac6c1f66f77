package transport

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/zeebo/blake3"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// The kinds of problem VerifyData reports beside index.Verify's.
const (
	// ProblemFileMissing is a path whose latest version has no
	// materialised file under the files root.
	ProblemFileMissing index.ProblemKind = "file-missing"
	// ProblemFileMismatch is a materialised file whose size or digests are
	// not those of its path's latest version.
	ProblemFileMismatch index.ProblemKind = "file-mismatch"
)

// ErrServerRunning is returned by VerifyData when a server holds the data
// directory's index open.
var ErrServerRunning = errors.New("a server is running on the data directory")

// VerifyConfig says what VerifyData checks.
type VerifyConfig struct {
	// DataDir is the server's data directory; FilesDir its files root,
	// default DataDir/files, as for ServerConfig.
	DataDir  string
	FilesDir string
	// Options tune the check of the index and the store; Options.Progress
	// also hears of the files, at stage "files".
	Options index.VerifyOptions
}

// VerifyStats counts what VerifyData checked.
type VerifyStats struct {
	index.VerifyStats
	// Files counts the materialised files read, of FileBytes bytes.
	Files     int
	FileBytes int64
}

// VerifyData checks a stopped server's data directory and reports every
// problem to report: everything index.Verify checks, then that the
// materialised file of each path's latest version exists and has that
// version's size, BLAKE3 and MD5, and that no temporary file of a push or
// a commit is left under the files root.
//
// It refuses, with ErrServerRunning, a data directory whose server is
// running: the server writes while it runs, so chunks and records in
// flight would look like damage, and it removes temporary files only when
// it starts. The index's file lock tells: VerifyData holds it shared while
// it runs, which keeps a server from starting meanwhile. Nothing in the
// data directory is changed.
func VerifyData(ctx context.Context, cfg VerifyConfig, report func(index.Problem)) (VerifyStats, error) {
	if cfg.FilesDir == "" {
		cfg.FilesDir = filepath.Join(cfg.DataDir, "files")
	}
	var st VerifyStats
	db, err := index.OpenDBReadOnly(filepath.Join(cfg.DataDir, indexFile))
	if errors.Is(err, index.ErrLocked) {
		return st, fmt.Errorf("verify %s: %w: stop it first (%v)", cfg.DataDir, ErrServerRunning, err)
	}
	if err != nil {
		return st, fmt.Errorf("verify %s: %w", cfg.DataDir, err)
	}
	defer db.Close()
	store, err := index.OpenDirStoreReadOnly(filepath.Join(cfg.DataDir, chunksDir))
	if err != nil {
		return st, fmt.Errorf("verify %s: %w", cfg.DataDir, err)
	}
	counted := func(p index.Problem) {
		st.Problems++
		report(p)
	}
	ist, err := index.Verify(ctx, db, store, cfg.Options, report)
	st.VerifyStats = ist
	if err != nil {
		return st, fmt.Errorf("verify %s: %w", cfg.DataDir, err)
	}
	if err := verifyFiles(ctx, db, cfg, &st, counted); err != nil {
		return st, fmt.Errorf("verify %s: %w", cfg.DataDir, err)
	}
	return st, nil
}

// verifyFiles checks the materialised file of every path's latest version
// and looks for temporary files under the files root (of pushes assembled
// as they ran, and of commits).
func verifyFiles(ctx context.Context, db *index.DB, cfg VerifyConfig, st *VerifyStats, report func(index.Problem)) error {
	temps, err := tempFiles(cfg.FilesDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, name := range temps {
		report(index.Problem{Kind: index.ProblemTempFile, Object: name, Detail: "temporary file of an interrupted push or commit; the server removes it when it starts"})
	}
	latest, err := db.List(ctx, "")
	if err != nil {
		return err
	}
	if len(latest) == 0 {
		return nil
	}
	root, err := os.OpenRoot(cfg.FilesDir)
	if err != nil {
		return fmt.Errorf("files root: %w", err)
	}
	defer root.Close()
	buf := make([]byte, 1<<20)
	for i, v := range latest {
		object := fmt.Sprintf("%s (version %d)", filepath.Join(cfg.FilesDir, filepath.FromSlash(v.Path)), v.Number)
		size, got, err := fileDigests(ctx, root, v.Path, buf)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, fs.ErrNotExist):
			report(index.Problem{Kind: ProblemFileMissing, Object: object, Detail: "no materialised file"})
		case err != nil:
			report(index.Problem{Kind: ProblemFileMismatch, Object: object, Detail: err.Error()})
		case size != v.Size:
			report(index.Problem{Kind: ProblemFileMismatch, Object: object, Detail: fmt.Sprintf("%d bytes, the version has %d", size, v.Size)})
		case got != v.Digests:
			report(index.Problem{Kind: ProblemFileMismatch, Object: object, Detail: fmt.Sprintf("BLAKE3 %x MD5 %x, the version has BLAKE3 %x MD5 %x",
				got.BLAKE3, got.MD5, v.Digests.BLAKE3, v.Digests.MD5)})
		}
		st.Files++
		st.FileBytes += size
		if p := cfg.Options.Progress; p != nil {
			p(index.VerifyProgress{Stage: "files", Done: i + 1, Total: len(latest), Bytes: st.FileBytes})
		}
	}
	return nil
}

// fileDigests reads the regular file name under root and returns its size
// and digests.
func fileDigests(ctx context.Context, root *os.Root, name string, buf []byte) (int64, engine.Digests, error) {
	var d engine.Digests
	fi, err := root.Lstat(name)
	if err != nil {
		return 0, d, err
	}
	if !fi.Mode().IsRegular() {
		return 0, d, fmt.Errorf("a %s, not a regular file", fi.Mode().Type())
	}
	f, err := root.Open(name)
	if err != nil {
		return 0, d, err
	}
	defer f.Close()
	b3, sum := blake3.New(), md5.New()
	hashes := io.MultiWriter(b3, sum)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, d, err
		}
		k, err := f.Read(buf)
		hashes.Write(buf[:k])
		n += int64(k)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, d, fmt.Errorf("read: %w", err)
		}
	}
	b3.Sum(d.BLAKE3[:0])
	sum.Sum(d.MD5[:0])
	return n, d, nil
}
