// Package bench measures chunksync: data-set generators, the bare-QUIC
// baseline that transfers are compared against, and the loopback benchmarks
// of push throughput and memory (see loopback_test.go).
package bench
