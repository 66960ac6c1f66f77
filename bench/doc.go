// Package bench measures chunksync, and is what `chunksync bench` runs:
//
//   - chunking strategies on the user's files and version pairs
//     (MeasureChunkers): throughput, chunk sizes, dedup and re-sync bytes,
//     against rsync -z where it is installed (RsyncServer);
//   - transfers through emulated links (RunTransfer, RunRsyncTransfer):
//     a server and the UDP link emulator (Link: loss, bursts, delay,
//     jitter, rate, reordering, duplication) on loopback, and rsync through
//     a TCP relay with the same rate and delay (TCPShape);
//   - reports people look at rather than read: a self-contained HTML page
//     of charts and tables (Report, WriteReport), checked in headless
//     Chromium (Screenshot).
//
// It also holds the project's own measurements: data-set generators, the
// bare-QUIC baseline that pushes are compared against and the loopback
// push benchmark (loopback_test.go), and the re-sync comparisons with rsync
// -z on tars of consecutive golang.org/x/tools releases (ModuleTars): an
// estimate of the protocol's bytes for a grid of strategies
// (EstimateResync, BenchmarkResync) and the real thing over loopback QUIC
// (resync_wire_test.go).
package bench
