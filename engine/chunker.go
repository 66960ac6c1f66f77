package engine

import (
	"fmt"
	"io"
	"sort"
)

// MaxChunkSize is the largest chunk any chunker may produce and any peer may
// send. Decoders refuse larger sizes before they allocate.
const MaxChunkSize = 16 << 20

// ChunkerParams name a chunking strategy and its parameters. A manifest
// records them so that a later push, a pull and the server cut the same way.
type ChunkerParams struct {
	// Name is the registry name, for example "rabin" or "fixed".
	Name string
	// Min, Avg and Max bound the chunk sizes in bytes. Fixed chunkers use
	// Avg as the chunk size and set Min and Max equal to it.
	Min, Avg, Max uint32
	// Poly is the Rabin polynomial; zero for chunkers that have none.
	Poly uint64
}

// String gives the parameters in a form fit for logs and JSON output.
func (p ChunkerParams) String() string {
	if p.Poly != 0 {
		return fmt.Sprintf("%s(min=%d,avg=%d,max=%d,poly=%#x)", p.Name, p.Min, p.Avg, p.Max, p.Poly)
	}
	return fmt.Sprintf("%s(min=%d,avg=%d,max=%d)", p.Name, p.Min, p.Avg, p.Max)
}

// Chunker cuts a stream into chunks.
type Chunker interface {
	// Next returns the next chunk. The slice is only valid until the next
	// call. At the end of the input Next returns io.EOF and no data.
	Next() ([]byte, error)
}

// ChunkerKind is one entry of the chunker registry.
type ChunkerKind struct {
	// Name is what users pass to --chunker and what manifests record.
	Name string
	// Doc says in one line when to use it.
	Doc string
	// Defaults are the parameters used when the user gives none.
	Defaults ChunkerParams
	// Validate refuses parameters the chunker cannot honour.
	Validate func(p ChunkerParams) error
	// New returns a chunker that reads r. p has been validated.
	New func(r io.Reader, p ChunkerParams) Chunker
}

var registry = map[string]ChunkerKind{}

// registerChunker adds a kind to the registry; it is called from init
// functions only, so a duplicate name is a programming error.
func registerChunker(k ChunkerKind) {
	if _, dup := registry[k.Name]; dup {
		panic("engine: chunker registered twice: " + k.Name)
	}
	registry[k.Name] = k
}

// ChunkerKinds returns every registered chunker, sorted by name.
func ChunkerKinds() []ChunkerKind {
	kinds := make([]ChunkerKind, 0, len(registry))
	for _, k := range registry {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return kinds[i].Name < kinds[j].Name })
	return kinds
}

// LookupChunker returns the registry entry for name.
func LookupChunker(name string) (ChunkerKind, error) {
	k, ok := registry[name]
	if !ok {
		names := make([]string, 0, len(registry))
		for _, k := range ChunkerKinds() {
			names = append(names, k.Name)
		}
		return ChunkerKind{}, fmt.Errorf("unknown chunker %q (known: %v)", name, names)
	}
	return k, nil
}

// ValidateParams checks p against the generic limits and its chunker's own.
func ValidateParams(p ChunkerParams) error {
	k, err := LookupChunker(p.Name)
	if err != nil {
		return err
	}
	if p.Min == 0 || p.Min > p.Avg || p.Avg > p.Max || p.Max > MaxChunkSize {
		return fmt.Errorf("chunker %s: need 0 < min <= avg <= max <= %d, got %s", p.Name, MaxChunkSize, p)
	}
	if err := k.Validate(p); err != nil {
		return fmt.Errorf("chunker %s: %w", p.Name, err)
	}
	return nil
}

// NewChunker returns a chunker for p that reads r.
func NewChunker(r io.Reader, p ChunkerParams) (Chunker, error) {
	if err := ValidateParams(p); err != nil {
		return nil, err
	}
	return registry[p.Name].New(r, p), nil
}
