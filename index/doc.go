// Package index owns what a chunksync server holds: the chunk index (which
// chunks are stored, their size and codec), the file catalogue (path →
// numbered versions → manifest), upload sessions, client token hashes, and
// the chunk store backends that keep chunk bytes.
//
// DB is the embedded on-disk database (bbolt) that implements ChunkIndex,
// Sessions, Catalogue and Tokens; DirStore is the local content-addressed
// chunk store. Every implementation runs the shared conformance suites in
// indextest and storetest.
package index
