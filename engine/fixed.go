package engine

import (
	"fmt"
	"io"
)

// fixedDefaultSize is the default chunk size of the fixed chunker: large
// enough that per-chunk costs (an ID, a round trip entry, a store file)
// vanish, small enough that a changed block costs little to resend.
const fixedDefaultSize = 1 << 20

func init() {
	registerChunker(ChunkerKind{
		Name: "fixed",
		Doc:  "constant-size chunks; for append-only files and block-aligned images",
		Defaults: ChunkerParams{
			Name: "fixed", Min: fixedDefaultSize, Avg: fixedDefaultSize, Max: fixedDefaultSize,
		},
		Validate: func(p ChunkerParams) error {
			if p.Min != p.Avg || p.Avg != p.Max {
				return fmt.Errorf("min, avg and max must be equal, got %s", p)
			}
			if p.Poly != 0 {
				return fmt.Errorf("poly must be zero, got %#x", p.Poly)
			}
			return nil
		},
		New: func(r io.Reader, p ChunkerParams) Chunker {
			return &fixedChunker{r: r, buf: make([]byte, p.Avg)}
		},
	})
}

// fixedChunker cuts every len(buf) bytes; only the last chunk is shorter.
type fixedChunker struct {
	r   io.Reader
	buf []byte
	err error
}

func (c *fixedChunker) Next() ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	n, err := io.ReadFull(c.r, c.buf)
	switch err {
	case nil:
		return c.buf[:n], nil
	case io.ErrUnexpectedEOF:
		c.err = io.EOF
		return c.buf[:n], nil
	case io.EOF:
		c.err = io.EOF
		return nil, io.EOF
	}
	c.err = fmt.Errorf("fixed chunker: %w", err)
	return nil, c.err
}
