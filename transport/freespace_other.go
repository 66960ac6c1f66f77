//go:build !linux && !darwin && !freebsd

package transport

// freeSpace cannot tell the free space here.
func freeSpace(string) (int64, bool) { return 0, false }
