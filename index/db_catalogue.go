package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chunksync/chunksync/engine"
)

// AddVersion records m as the next version of m.Path, created at now, and
// returns its number: 1 for a path's first version. It refuses a manifest
// that engine's Validate refuses.
func (db *DB) AddVersion(ctx context.Context, m *engine.Manifest, now time.Time) (uint64, error) {
	return db.addVersion(ctx, m, "", false, now)
}

// addVersion is AddVersion that also ends the upload session endSession,
// unless it is "", and, with pending, marks the version pending (see
// PendingVersions), in the same transaction: a crash can then never leave
// the version recorded and its session open, for a retried commit to
// record the version again, nor recorded and unmarked before the server
// has put it in place. A session that has ended already is no error.
func (db *DB) addVersion(ctx context.Context, m *engine.Manifest, endSession string, pending bool, now time.Time) (uint64, error) {
	var sid []byte
	if endSession != "" {
		var err error
		if sid, err = parseSessionID(endSession); err != nil {
			return 0, fmt.Errorf("add version of %s: %w", m.Path, err)
		}
	}
	data, err := m.MarshalBinary()
	if err != nil {
		return 0, fmt.Errorf("add version of %s: %w", m.Path, err)
	}
	v := Version{Path: m.Path, Created: normTime(now), Size: m.Size, Digests: m.Digests, Chunker: m.Chunker}
	if len(v.Chunker.Name) > maxChunkerNameLen {
		return 0, fmt.Errorf("add version of %s: chunker name of %d bytes exceeds %d", m.Path, len(v.Chunker.Name), maxChunkerNameLen)
	}
	val := encodeVersionRecord(nil, v, data)
	var n uint64
	err = db.update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVersions)
		latest, err := latestVersion(b.Cursor(), m.Path)
		if err != nil {
			return err
		}
		if latest == math.MaxUint64 {
			return fmt.Errorf("version numbers exhausted")
		}
		n = latest + 1
		if err := b.Put(versionKey(m.Path, n), val); err != nil {
			return err
		}
		if pending {
			if err := tx.Bucket(bucketPendingVersions).Put([]byte(m.Path), encodePendingRecord(nil, n)); err != nil {
				return err
			}
		}
		if sid == nil {
			return nil
		}
		sess, err := getSession(tx, sid)
		if errors.Is(err, ErrSessionNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return deleteSession(tx, sid, sess)
	})
	if err != nil {
		return 0, fmt.Errorf("add version of %s: %w", m.Path, err)
	}
	return n, nil
}

// PendingVersion is a version that a server's commit recorded
// (Collector.AddVersion) and has not yet reported in place under its files
// root (FinishCommit). A crash in between leaves the files root holding an
// older version of the path than the catalogue's latest.
type PendingVersion struct {
	Path   string
	Number uint64
}

// PendingVersions returns the pending versions, sorted by path: none once
// every commit has finished. A server calls it when it starts, to put the
// latest version of each of their paths in place.
func (db *DB) PendingVersions(ctx context.Context) ([]PendingVersion, error) {
	var list []PendingVersion
	err := db.view(ctx, func(tx *bolt.Tx) error {
		return eachPending(tx, func(_ []byte, pv PendingVersion, err error) error {
			if err != nil {
				return err
			}
			list = append(list, pv)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("pending versions: %w", err)
	}
	return list, nil
}

// eachPending calls fn with the key of every pending record, in order of
// path, and the version it decodes to or why it does not, and stops at
// the first error fn returns. A database from before the pending-versions
// bucket has none.
func eachPending(tx *bolt.Tx, fn func(key []byte, pv PendingVersion, err error) error) error {
	b := tx.Bucket(bucketPendingVersions)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, val []byte) error {
		pv, err := decodePendingRecord(k, val)
		return fn(k, pv, err)
	})
}

// latestVersion returns the highest version number recorded for path, or 0.
func latestVersion(c *bolt.Cursor, path string) (uint64, error) {
	k, _ := seekLatest(c, path)
	if k == nil {
		return 0, nil
	}
	_, n, err := parseVersionKey(k)
	if err != nil {
		return 0, corruptRecord("version", k, err)
	}
	return n, nil
}

// seekLatest moves c to the latest version of path and returns its key and
// value, or nil when path has no version. It costs one seek however many
// versions path has.
func seekLatest(c *bolt.Cursor, path string) (key, val []byte) {
	last := versionKey(path, math.MaxUint64)
	k, v := c.Seek(last)
	switch {
	case bytes.Equal(k, last):
		return k, v
	case k == nil:
		k, v = c.Last()
	default:
		k, v = c.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, versionPrefix(path)) {
		return nil, nil
	}
	return k, v
}

// Manifest returns version n of path, or its latest version when n is 0,
// with its manifest; ErrVersionNotFound when the catalogue has neither.
func (db *DB) Manifest(ctx context.Context, path string, n uint64) (Version, *engine.Manifest, error) {
	var v Version
	var m engine.Manifest
	err := db.view(ctx, func(tx *bolt.Tx) error {
		if !validCataloguePath(path) {
			return ErrVersionNotFound
		}
		b := tx.Bucket(bucketVersions)
		num := n
		if num == 0 {
			var err error
			if num, err = latestVersion(b.Cursor(), path); err != nil {
				return err
			}
			if num == 0 {
				return ErrVersionNotFound
			}
		}
		key := versionKey(path, num)
		val := b.Get(key)
		if val == nil {
			return ErrVersionNotFound
		}
		var data []byte
		var err error
		if v, data, err = decodeVersionRecord(key, val); err != nil {
			return err
		}
		if err := m.UnmarshalBinary(data); err != nil {
			return corruptRecord("version", key, err)
		}
		if m.Path != v.Path || m.Size != v.Size || m.Digests != v.Digests || m.Chunker != v.Chunker {
			return corruptRecord("version", key, errors.New("manifest disagrees with the version it is stored under"))
		}
		return nil
	})
	if err != nil {
		return Version{}, nil, fmt.Errorf("manifest %s version %d: %w", path, n, err)
	}
	return v, &m, nil
}

// Versions lists the versions of path, oldest first, or returns
// ErrVersionNotFound for a path without any. It does not decode the
// manifests.
func (db *DB) Versions(ctx context.Context, path string) ([]Version, error) {
	var list []Version
	err := db.view(ctx, func(tx *bolt.Tx) error {
		if !validCataloguePath(path) {
			return ErrVersionNotFound
		}
		prefix := versionPrefix(path)
		c := tx.Bucket(bucketVersions).Cursor()
		for k, val := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, val = c.Next() {
			v, _, err := decodeVersionRecord(k, val)
			if err != nil {
				return err
			}
			list = append(list, v)
		}
		if len(list) == 0 {
			return ErrVersionNotFound
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("versions of %s: %w", path, err)
	}
	return list, nil
}

// validCataloguePath reports whether path can name a catalogued file: one
// with a NUL would match the keys of another path.
func validCataloguePath(path string) bool {
	return path != "" && len(path) <= engine.MaxPathLen && strings.IndexByte(path, 0) < 0
}

// List returns the latest version of every path that starts with prefix,
// a byte prefix ("" for every path), sorted by path. No path matching is
// not an error: the list is then empty. List seeks from path to path, so
// it costs time in proportion to the paths listed, not to their versions,
// and it does not decode the manifests.
func (db *DB) List(ctx context.Context, prefix string) ([]Version, error) {
	var list []Version
	err := db.view(ctx, func(tx *bolt.Tx) error {
		if strings.IndexByte(prefix, 0) >= 0 {
			// No path holds a NUL.
			return nil
		}
		// Version keys sort as their paths do (path, NUL, number), and a
		// key starts with prefix exactly when its path does.
		start := []byte(prefix)
		c := tx.Bucket(bucketVersions).Cursor()
		for k, _ := c.Seek(start); k != nil && bytes.HasPrefix(k, start); k, _ = c.Next() {
			if len(list)&0xfff == 0xfff {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			path, _, err := parseVersionKey(k)
			if err != nil {
				return corruptRecord("version", k, err)
			}
			// Leave c on the path's latest key, so that Next moves to the
			// first key of the next path.
			v, _, err := decodeVersionRecord(seekLatest(c, path))
			if err != nil {
				return err
			}
			list = append(list, v)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list versions under %q: %w", prefix, err)
	}
	return list, nil
}

// pruneRound bounds the version records PruneAll deletes in one
// transaction, so that it never holds the writer for long.
const pruneRound = 10_000

// PruneVersions deletes all but the newest keep versions of path, in one
// transaction, and returns the numbers of the versions it deleted, oldest
// first (none when path has at most keep versions). It returns
// ErrVersionNotFound for a path without versions and refuses a keep below
// 1. The latest version is never deleted, so the numbers AddVersion gives
// keep growing: no number is used twice.
func (db *DB) PruneVersions(ctx context.Context, path string, keep int) ([]uint64, error) {
	pruned, err := db.prune(ctx, path, keep, 0)
	if err != nil {
		return nil, fmt.Errorf("prune versions of %s: %w", path, err)
	}
	return pruned, nil
}

// FinishCommit ends the commit of version n of path once the server has
// put the version in place: it clears the path's pending mark, unless a
// later version's commit has set it since, and prunes the path as
// PruneVersions does, in the transaction that a commit's pruning takes
// anyway. It returns the numbers of the versions pruned.
func (db *DB) FinishCommit(ctx context.Context, path string, n uint64, keep int) ([]uint64, error) {
	pruned, err := db.prune(ctx, path, keep, n)
	if err != nil {
		return nil, fmt.Errorf("finish commit of %s version %d: %w", path, n, err)
	}
	return pruned, nil
}

// prune is PruneVersions that, unless finished is 0, also clears the
// pending mark of path if it names version finished or an earlier one.
func (db *DB) prune(ctx context.Context, path string, keep int, finished uint64) ([]uint64, error) {
	if keep < 1 {
		return nil, fmt.Errorf("keep %d, want at least 1", keep)
	}
	var pruned []uint64
	var found bool
	err := db.update(ctx, func(tx *bolt.Tx) error {
		pruned, found = nil, false
		if !validCataloguePath(path) {
			return nil
		}
		if finished != 0 {
			if err := clearPending(tx.Bucket(bucketPendingVersions), path, finished); err != nil {
				return err
			}
		}
		var err error
		pruned, found, err = prunePath(tx.Bucket(bucketVersions), path, keep)
		return err
	})
	if err == nil && !found {
		err = ErrVersionNotFound
	}
	return pruned, err
}

// clearPending deletes the pending mark of path from b if it names version
// n or an earlier one. A mark that fails to decode names nothing later:
// it goes too.
func clearPending(b *bolt.Bucket, path string, n uint64) error {
	val := b.Get([]byte(path))
	if val == nil {
		return nil
	}
	if pv, err := decodePendingRecord([]byte(path), val); err == nil && pv.Number > n {
		return nil
	}
	return b.Delete([]byte(path))
}

// PruneAll deletes all but the newest keep versions of every path and
// returns how many versions it deleted. It finds the paths with more than
// keep versions in one read transaction and prunes them in write
// transactions of at most about pruneRound deletions, each path within one.
// Versions added meanwhile are newer than those it deletes, so no path is
// left with fewer than keep versions, nor without its latest one.
func (db *DB) PruneAll(ctx context.Context, keep int) (int, error) {
	if keep < 1 {
		return 0, fmt.Errorf("prune versions: keep %d, want at least 1", keep)
	}
	type excess struct {
		path string
		n    int
	}
	var todo []excess
	err := db.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketVersions).Cursor()
		for k, _ := c.First(); k != nil; {
			if err := ctx.Err(); err != nil {
				return err
			}
			path, _, err := parseVersionKey(k)
			if err != nil {
				return corruptRecord("version", k, err)
			}
			prefix := versionPrefix(path)
			n := 0
			for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
				n++
			}
			if n > keep {
				todo = append(todo, excess{path, n - keep})
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune versions: %w", err)
	}
	total := 0
	for len(todo) > 0 {
		end, sum := 1, todo[0].n
		for end < len(todo) && sum+todo[end].n <= pruneRound {
			sum += todo[end].n
			end++
		}
		round := todo[:end]
		todo = todo[end:]
		var n int
		err := db.update(ctx, func(tx *bolt.Tx) error {
			n = 0
			b := tx.Bucket(bucketVersions)
			for _, e := range round {
				pruned, _, err := prunePath(b, e.path, keep)
				if err != nil {
					return err
				}
				n += len(pruned)
			}
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("prune versions: %w", err)
		}
		total += n
	}
	return total, nil
}

// prunePath deletes all but the newest keep versions of path from b and
// returns their numbers, oldest first; found is false when path has no
// versions.
func prunePath(b *bolt.Bucket, path string, keep int) (pruned []uint64, found bool, err error) {
	prefix := versionPrefix(path)
	var nums []uint64
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		_, n, err := parseVersionKey(k)
		if err != nil {
			return nil, false, corruptRecord("version", k, err)
		}
		nums = append(nums, n)
	}
	if len(nums) <= keep {
		return nil, len(nums) > 0, nil
	}
	pruned = nums[:len(nums)-keep]
	for _, n := range pruned {
		if err := b.Delete(versionKey(path, n)); err != nil {
			return nil, true, err
		}
	}
	return pruned, true, nil
}
