// Package engine owns everything chunksync knows about file content: the
// chunkers and their registry, chunk IDs (BLAKE3-256), whole-file digests
// (BLAKE3-256 and MD5), manifests and their binary encoding, per-chunk
// compression, and the push plan that turns a local file into the chunks a
// remote is missing.
//
// engine knows nothing of QUIC, the command line or how a server lays out
// its disk: it declares what it needs from a remote as small interfaces
// (see Remote) and the transport package implements them.
package engine
