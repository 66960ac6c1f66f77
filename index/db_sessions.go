package index

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chunksync/chunksync/engine"
)

// formatSessionID returns the text form of a session ID: lower-case hex.
func formatSessionID(b []byte) string { return hex.EncodeToString(b) }

// parseSessionID parses the text form of a session ID. Text that is not a
// session ID names no session, so it gives ErrSessionNotFound.
func parseSessionID(s string) ([]byte, error) {
	if len(s) != 2*sessionIDLen || strings.ToLower(s) != s {
		return nil, fmt.Errorf("%w: malformed id", ErrSessionNotFound)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: malformed id", ErrSessionNotFound)
	}
	return b, nil
}

// specIndexKey is the key under which the session of owner for spec is
// found when the same push comes back.
func specIndexKey(owner string, spec engine.UploadSpec) []byte {
	h := sha256.New()
	h.Write(appendSpec(appendString16(nil, owner), spec))
	return h.Sum(nil)
}

// sameSpec reports whether two specs describe the same push.
func sameSpec(a, b engine.UploadSpec) bool {
	return a.Path == b.Path && a.Size == b.Size && a.Mode == b.Mode &&
		a.ModTime.Equal(b.ModTime) && a.Chunker == b.Chunker
}

// OpenSession returns the open session of owner for spec, touched at now,
// or creates one with a new random 128-bit ID. Specs are the same when
// path, size, mode, mtime and chunker parameters all are.
func (db *DB) OpenSession(ctx context.Context, owner string, spec engine.UploadSpec, now time.Time) (Session, bool, error) {
	if err := checkSession(owner, spec); err != nil {
		return Session{}, false, fmt.Errorf("open session for %s: %w", spec.Path, err)
	}
	spec.ModTime = normTime(spec.ModTime)
	now = normTime(now)
	specKey := specIndexKey(owner, spec)
	newID := make([]byte, sessionIDLen)
	rand.Read(newID)

	var s Session
	var reattached bool
	err := db.update(ctx, func(tx *bolt.Tx) error {
		sessions, specs := tx.Bucket(bucketSessions), tx.Bucket(bucketSessionSpecs)
		if v := specs.Get(specKey); v != nil {
			sid, err := decodeSessionSpecIndex(specKey, v)
			if err != nil {
				return err
			}
			sid = bytes.Clone(sid)
			if rec := sessions.Get(sid); rec != nil {
				cur, err := decodeSessionRecord(sid, rec)
				if err != nil {
					return err
				}
				if cur.Owner == owner && sameSpec(cur.Spec, spec) {
					cur.Updated = now
					s, reattached = cur, true
					return sessions.Put(sid, encodeSessionRecord(nil, cur))
				}
			}
		}
		if sessions.Get(newID) != nil {
			return fmt.Errorf("new session id %x is taken", newID)
		}
		s = Session{ID: formatSessionID(newID), Owner: owner, Spec: spec, Created: now, Updated: now}
		reattached = false
		if err := sessions.Put(newID, encodeSessionRecord(nil, s)); err != nil {
			return err
		}
		return specs.Put(specKey, newID)
	})
	if err != nil {
		return Session{}, false, fmt.Errorf("open session for %s: %w", spec.Path, err)
	}
	return s, reattached, nil
}

// AddSessionChunks records refs at positions first, first+1, ... of the
// session and touches it at now. Positions run up to
// engine.MaxManifestChunks.
func (db *DB) AddSessionChunks(ctx context.Context, id string, first int, refs []engine.ChunkRef, now time.Time) error {
	sid, err := parseSessionID(id)
	if err != nil {
		return fmt.Errorf("add chunks to session %s: %w", id, err)
	}
	if first < 0 || first > maxSessionChunks || len(refs) > maxSessionChunks-first {
		return fmt.Errorf("add chunks to session %s: positions %d..%d outside 0..%d", id, first, first+len(refs), maxSessionChunks)
	}
	const keyLen = sessionIDLen + 8
	keys := make([]byte, 0, len(refs)*keyLen)
	vals := make([]byte, 0, len(refs)*sessionRefRecordLen)
	for i, ref := range refs {
		if ref.Size > engine.MaxChunkSize {
			return fmt.Errorf("add chunks to session %s: chunk %s at %d: size %d above limit %d", id, ref.ID, first+i, ref.Size, engine.MaxChunkSize)
		}
		keys = append(keys, sessionRefKey(sid, uint64(first+i))...)
		vals = encodeSessionRefRecord(vals, ref)
	}
	now = normTime(now)
	err = db.update(ctx, func(tx *bolt.Tx) error {
		sessions := tx.Bucket(bucketSessions)
		rec := sessions.Get(sid)
		if rec == nil {
			return ErrSessionNotFound
		}
		s, err := decodeSessionRecord(sid, rec)
		if err != nil {
			return err
		}
		s.Updated = now
		if err := sessions.Put(sid, encodeSessionRecord(nil, s)); err != nil {
			return err
		}
		b := tx.Bucket(bucketSessionChunks)
		for i := range refs {
			k := keys[i*keyLen : (i+1)*keyLen]
			v := vals[i*sessionRefRecordLen : (i+1)*sessionRefRecordLen]
			if err := b.Put(k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add chunks to session %s: %w", id, err)
	}
	return nil
}

// getSession reads a session record in tx, or returns ErrSessionNotFound.
func getSession(tx *bolt.Tx, sid []byte) (Session, error) {
	rec := tx.Bucket(bucketSessions).Get(sid)
	if rec == nil {
		return Session{}, ErrSessionNotFound
	}
	return decodeSessionRecord(sid, rec)
}

// Session returns the session without reading its chunk list, or
// ErrSessionNotFound.
func (db *DB) Session(ctx context.Context, id string) (Session, error) {
	sid, err := parseSessionID(id)
	if err != nil {
		return Session{}, fmt.Errorf("session %s: %w", id, err)
	}
	var s Session
	err = db.view(ctx, func(tx *bolt.Tx) error {
		s, err = getSession(tx, sid)
		return err
	})
	if err != nil {
		return Session{}, fmt.Errorf("session %s: %w", id, err)
	}
	return s, nil
}

// SessionProgress returns the session and counts the chunks listed so far
// and how many of them the chunk index records, in one read transaction.
// It reads every listed chunk, so it costs time in proportion to the file.
func (db *DB) SessionProgress(ctx context.Context, id string) (SessionProgress, error) {
	sid, err := parseSessionID(id)
	if err != nil {
		return SessionProgress{}, fmt.Errorf("session progress %s: %w", id, err)
	}
	var p SessionProgress
	err = db.view(ctx, func(tx *bolt.Tx) error {
		s, err := getSession(tx, sid)
		if err != nil {
			return err
		}
		p = SessionProgress{Session: s}
		chunks := tx.Bucket(bucketChunks)
		c := tx.Bucket(bucketSessionChunks).Cursor()
		for k, v := c.Seek(sid); k != nil && bytes.HasPrefix(k, sid); k, v = c.Next() {
			if p.Chunks&0xfff == 0xfff {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			ref, err := decodeSessionRefRecord(k, v)
			if err != nil {
				return err
			}
			p.Chunks++
			p.Bytes += int64(ref.Size)
			if chunks.Get(ref.ID[:]) != nil {
				p.ChunksStored++
				p.BytesStored += int64(ref.Size)
			}
		}
		return nil
	})
	if err != nil {
		return SessionProgress{}, fmt.Errorf("session progress %s: %w", id, err)
	}
	return p, nil
}

// ListSessions returns every open session, oldest first.
func (db *DB) ListSessions(ctx context.Context) ([]Session, error) {
	var list []Session
	err := db.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSessions).ForEach(func(k, v []byte) error {
			s, err := decodeSessionRecord(k, v)
			if err != nil {
				return err
			}
			list = append(list, s)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	slices.SortFunc(list, func(a, b Session) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return list, nil
}

// DeleteSession removes a session with its chunk list, or returns
// ErrSessionNotFound. The chunks themselves stay in the store and index.
func (db *DB) DeleteSession(ctx context.Context, id string) error {
	sid, err := parseSessionID(id)
	if err != nil {
		return fmt.Errorf("delete session %s: %w", id, err)
	}
	err = db.update(ctx, func(tx *bolt.Tx) error {
		s, err := getSession(tx, sid)
		if err != nil {
			return err
		}
		return deleteSession(tx, sid, s)
	})
	if err != nil {
		return fmt.Errorf("delete session %s: %w", id, err)
	}
	return nil
}

// ExpireSessions removes the sessions last touched before idleBefore, with
// their chunk lists, and returns their IDs, oldest first.
func (db *DB) ExpireSessions(ctx context.Context, idleBefore time.Time) ([]string, error) {
	var expired []Session
	err := db.update(ctx, func(tx *bolt.Tx) error {
		expired = expired[:0]
		var sids [][]byte
		err := tx.Bucket(bucketSessions).ForEach(func(k, v []byte) error {
			s, err := decodeSessionRecord(k, v)
			if err != nil {
				return err
			}
			if s.Updated.Before(idleBefore) {
				expired = append(expired, s)
				sids = append(sids, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for i, sid := range sids {
			if err := deleteSession(tx, sid, expired[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("expire sessions idle since %v: %w", idleBefore, err)
	}
	slices.SortFunc(expired, func(a, b Session) int { return a.Created.Compare(b.Created) })
	ids := make([]string, len(expired))
	for i, s := range expired {
		ids[i] = s.ID
	}
	return ids, nil
}

// deleteSession removes session s, stored under sid, its chunk list and its
// spec index entry.
func deleteSession(tx *bolt.Tx, sid []byte, s Session) error {
	// Collect keys, then delete them: a bbolt cursor skips entries when
	// moved after a Delete, and seeking again after each Delete costs 30 us
	// a key. Rounds of at most 64k keys bound the memory this takes.
	b := tx.Bucket(bucketSessionChunks)
	const round = 1 << 16
	keys := make([]byte, 0, round*(sessionIDLen+8))
	for {
		keys = keys[:0]
		c := b.Cursor()
		for k, _ := c.Seek(sid); k != nil && bytes.HasPrefix(k, sid) && len(keys) < cap(keys); k, _ = c.Next() {
			keys = append(keys, k...)
		}
		if len(keys) == 0 {
			break
		}
		for k := range slices.Chunk(keys, sessionIDLen+8) {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
	}
	specs := tx.Bucket(bucketSessionSpecs)
	specKey := specIndexKey(s.Owner, s.Spec)
	if v := specs.Get(specKey); bytes.Equal(v, sid) {
		if err := specs.Delete(specKey); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketSessions).Delete(sid)
}
