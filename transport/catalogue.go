package transport

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// maxListed bounds the versions one list or versions reply may carry.
const maxListed = 1 << 20

func encodeVersion(e *enc, v index.Version) {
	e.string(v.Path)
	e.uvarint(v.Number)
	e.varint(v.Created.UnixNano())
	e.varint(v.Size)
	e.raw(v.Digests.BLAKE3[:])
	e.raw(v.Digests.MD5[:])
	encodeParams(e, v.Chunker)
}

func decodeVersion(d *dec) index.Version {
	v := index.Version{Path: d.string("path", maxPathLen), Number: d.uvarint("version")}
	v.Created = time.Unix(0, d.varint("created"))
	v.Size = d.varint("size")
	copy(v.Digests.BLAKE3[:], d.take(32, "blake3"))
	copy(v.Digests.MD5[:], d.take(16, "md5"))
	v.Chunker = decodeParams(d)
	if d.err == nil && v.Size < 0 {
		d.fail("negative size %d", v.Size)
	}
	return v
}

func encodeVersions(list []index.Version) []byte {
	e := enc{}
	e.uvarint(uint64(len(list)))
	for _, v := range list {
		encodeVersion(&e, v)
	}
	return e.b
}

func decodeVersions(b []byte) ([]index.Version, error) {
	d := dec{b: b}
	n := d.count("versions", maxListed, 1)
	list := make([]index.Version, 0, n)
	for range n {
		list = append(list, decodeVersion(&d))
	}
	return list, d.end()
}

// manifest answers a request for version n (0: the latest) of a path with
// the version and its manifest, as a delta against the version the client
// says it holds when the server holds that one too.
func (s *Server) manifest(ctx context.Context, body []byte) ([]byte, error) {
	d := dec{b: body}
	p := d.string("path", maxPathLen)
	n := d.uvarint("version")
	have := decodeBaseRef(&d)
	if err := d.end(); err != nil {
		return nil, err
	}
	if err := checkRemotePath(p); err != nil {
		return nil, err
	}
	v, m, err := s.db.Manifest(ctx, p, n)
	if err != nil {
		return nil, err
	}
	base := s.acceptBase(ctx, p, have)
	if base == nil {
		have.Version = 0
	}
	e := enc{}
	encodeVersion(&e, v)
	if err := encodeManifest(&e, m, have.Version, base); err != nil {
		return nil, err
	}
	return e.b, nil
}

func (s *Server) list(ctx context.Context, body []byte) ([]byte, error) {
	d := dec{b: body}
	prefix := d.string("prefix", maxPathLen)
	if err := d.end(); err != nil {
		return nil, err
	}
	list, err := s.db.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	if len(list) > maxListed {
		return nil, refuse(statusError, "%d paths under %q, more than one reply carries (%d): give a longer prefix", len(list), prefix, maxListed)
	}
	return encodeVersions(list), nil
}

func (s *Server) versions(ctx context.Context, body []byte) ([]byte, error) {
	d := dec{b: body}
	p := d.string("path", maxPathLen)
	if err := d.end(); err != nil {
		return nil, err
	}
	if err := checkRemotePath(p); err != nil {
		return nil, err
	}
	list, err := s.db.Versions(ctx, p)
	if err != nil {
		return nil, err
	}
	return encodeVersions(list[max(0, len(list)-maxListed):]), nil
}

// Manifest fetches version n of a remote path (0 for the latest) and checks
// the manifest before returning it. When the client remembers a version of
// the path, the server sends the manifest as a delta against it; the client
// then remembers the one it fetched.
func (c *Client) Manifest(ctx context.Context, path string, n uint64) (index.Version, *engine.Manifest, error) {
	fp := c.serverFingerprint()
	haveN, have := c.cache.load(fp, path)
	e := enc{}
	e.string(path)
	e.uvarint(n)
	ref := baseRef{Version: haveN}
	if have != nil {
		ref.BLAKE3 = have.Digests.BLAKE3
	}
	encodeBaseRef(&e, ref)
	reply, err := c.call(ctx, opManifest, e.b)
	if err != nil {
		return index.Version{}, nil, fmt.Errorf("manifest of %s: %w", path, err)
	}
	d := dec{b: reply}
	v := decodeVersion(&d)
	m, err := decodeManifest(&d, func(p string, n, _ uint64) (*engine.Manifest, error) {
		if have == nil || n != haveN || p != path {
			return nil, fmt.Errorf("%w: delta against version %d of %s, which this client did not offer", errMalformed, n, p)
		}
		return have, nil
	})
	if err == nil {
		err = d.end()
	}
	if err != nil {
		return index.Version{}, nil, fmt.Errorf("manifest of %s from the server: %w", path, err)
	}
	if v.Path != path || m.Path != path || (n != 0 && v.Number != n) || m.Size != v.Size || m.Digests != v.Digests || m.Chunker != v.Chunker {
		return index.Version{}, nil, fmt.Errorf("manifest of %s: %w: server answered with %s version %d", path, errMalformed, v.Path, v.Number)
	}
	c.cache.store(fp, v.Number, m)
	return v, m, nil
}

// List returns the latest version of every remote path that starts with
// prefix, sorted by path.
func (c *Client) List(ctx context.Context, prefix string) ([]index.Version, error) {
	list, err := c.versionList(ctx, opList, prefix)
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	return list, nil
}

// Versions returns the versions of a remote path, oldest first.
func (c *Client) Versions(ctx context.Context, path string) ([]index.Version, error) {
	list, err := c.versionList(ctx, opVersions, path)
	if err != nil {
		return nil, fmt.Errorf("versions of %s: %w", path, err)
	}
	return list, nil
}

// versionList sends op with its one string argument and decodes the list
// of versions it answers.
func (c *Client) versionList(ctx context.Context, op byte, arg string) ([]index.Version, error) {
	e := enc{}
	e.string(arg)
	reply, err := c.call(ctx, op, e.b)
	if err != nil {
		return nil, err
	}
	return decodeVersions(reply)
}

func (s *Server) collect(ctx context.Context, body []byte) ([]byte, error) {
	if len(body) != 0 {
		return nil, refuse(statusBadRequest, "collect request takes no arguments")
	}
	st, err := s.Collect(ctx)
	if errors.Is(err, index.ErrCollecting) {
		return nil, refuse(statusError, "a garbage collection is already running")
	}
	if err != nil {
		return nil, err
	}
	e := enc{}
	for _, v := range []int64{int64(st.Versions), int64(st.Sessions), int64(st.ChunksMarked), int64(st.ChunksDeleted),
		st.RawBytesFreed, st.StoredBytesFreed, int64(st.ChunksKeptForPushes), int64(st.OrphansDeleted), int64(st.Duration)} {
		e.varint(v)
	}
	return e.b, nil
}

// Collect asks the server to prune old versions and delete the chunks
// that no version or open session refers to, and returns what it did.
func (c *Client) Collect(ctx context.Context) (index.GCStats, error) {
	reply, err := c.call(ctx, opCollect, nil)
	if err != nil {
		return index.GCStats{}, fmt.Errorf("garbage collection: %w", err)
	}
	d := dec{b: reply}
	var st index.GCStats
	for _, f := range []*int{&st.Versions, &st.Sessions, &st.ChunksMarked, &st.ChunksDeleted} {
		*f = int(d.varint("count"))
	}
	st.RawBytesFreed = d.varint("raw bytes freed")
	st.StoredBytesFreed = d.varint("stored bytes freed")
	st.ChunksKeptForPushes = int(d.varint("chunks kept"))
	st.OrphansDeleted = int(d.varint("orphans"))
	st.Duration = time.Duration(d.varint("duration"))
	if err := d.end(); err != nil {
		return index.GCStats{}, fmt.Errorf("garbage collection: %w", err)
	}
	return st, nil
}
