// Package index owns what a chunksync server holds: the chunk index (which
// chunks are stored, their size and codec), the file catalogue (path →
// numbered versions → manifest), upload sessions, and the chunk store
// backends that keep chunk bytes. Client tokens are not its business: the
// transport keeps their hashes in a file of their own, which works while
// the server holds the database locked.
//
// DB is the embedded on-disk database (bbolt) that implements ChunkIndex,
// Sessions, Catalogue and Pruner; DirStore is the local content-addressed
// chunk store. Every implementation runs the shared conformance suites in
// indextest and storetest.
//
// Pruning deletes old versions from the catalogue, never a path's latest,
// so version numbers are never given twice. A Collector deletes the chunks
// that no version and no open session names (garbage collection) while
// pushes run: the server stores, looks up and commits chunks through it,
// so that no chunk it has reported present is deleted under a push. A
// commit's version stays pending from the transaction that records it
// until the server reports it in place under its files root
// (DB.FinishCommit); a server that crashed in between finds it in
// DB.PendingVersions when it starts.
//
// Verify checks a database and a store that nothing writes against each
// other and reports the damage it finds: corrupt or missing chunks,
// records that disagree with the store, versions whose content no longer
// matches their digests, temporary files and pending versions a crash
// left.
package index
