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
		return b.Put(versionKey(m.Path, n), val)
	})
	if err != nil {
		return 0, fmt.Errorf("add version of %s: %w", m.Path, err)
	}
	return n, nil
}

// latestVersion returns the highest version number recorded for path, or 0.
func latestVersion(c *bolt.Cursor, path string) (uint64, error) {
	last := versionKey(path, math.MaxUint64)
	k, _ := c.Seek(last)
	switch {
	case bytes.Equal(k, last):
		return math.MaxUint64, nil
	case k == nil:
		k, _ = c.Last()
	default:
		k, _ = c.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, versionPrefix(path)) {
		return 0, nil
	}
	_, n, err := parseVersionKey(k)
	if err != nil {
		return 0, corruptRecord("version", k, err)
	}
	return n, nil
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
