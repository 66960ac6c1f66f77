package bench

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
)

// WriteRandomFile writes size seeded pseudo-random (incompressible) bytes
// to path, streaming through a small buffer.
func WriteRandomFile(path string, size int64, seed uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write random file: %w", err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	w := bufio.NewWriterSize(f, 1<<20)
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(left, int64(len(buf)))
		rng.Read(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return fmt.Errorf("write random file %s: %w", path, err)
		}
		left -= n
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write random file %s: %w", path, err)
	}
	return f.Close()
}
