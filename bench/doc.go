// Package bench measures chunksync, and is what `chunksync bench` runs:
//
//   - chunking strategies on the user's files and version pairs
//     (MeasureChunkers): throughput, chunk sizes, dedup and re-sync bytes,
//     against rsync -z where it is installed (RsyncServer);
//   - transfers through emulated links: chunksync through a server and
//     the UDP link emulator (Link: loss, bursts, delay, jitter, rate,
//     reordering, duplication) on loopback (RunTransfer), and the TCP
//     tools, a plain TCP stream and rsync with CUBIC or BBR, through the
//     same emulator at the IP level (RunTCPTransfer): TUNLink joins two
//     network namespaces it creates through TUN devices and treats every
//     IP packet as Link treats a datagram, so that TCP meets the same
//     loss, queue and delay as QUIC (Linux, as root);
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
