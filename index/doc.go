// Package index owns what a chunksync server holds: the chunk index (which
// chunks are stored, their size and codec), the file catalogue (path →
// numbered versions → manifest), upload sessions, and the chunk store
// backends that keep chunk bytes. Client tokens are not its business: the
// transport keeps their hashes in a file of their own, which works while
// the server holds the database locked.
//
// DB is the embedded on-disk database (bbolt) that implements ChunkIndex,
// Sessions, Catalogue and Pruner; DirStore is the local content-addressed
// chunk store. Pruning deletes old versions from the catalogue and never a
// path's latest, so version numbers are never given twice. Every implementation runs the shared conformance suites in
// indextest and storetest.
package index
