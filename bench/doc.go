// Package bench measures chunksync: data-set generators, the bare-QUIC
// baseline that transfers are compared against, the loopback benchmarks of
// push throughput and memory (loopback_test.go), and the re-sync
// comparisons with rsync -z on tars of consecutive golang.org/x/tools
// releases (ModuleTars, RsyncServer): an estimate of the protocol's bytes
// for a grid of strategies (EstimateResync, BenchmarkResync) and the real
// thing over loopback QUIC (resync_wire_test.go).
package bench
