//go:build race

package engine

// raceEnabled is true under the race detector, which makes sync.Pool drop
// items at random and so defeats tests of pooled memory.
const raceEnabled = true
