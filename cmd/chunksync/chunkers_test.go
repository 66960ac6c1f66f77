package main

import (
	"strings"
	"testing"

	"github.com/chunksync/chunksync/engine"
)

func TestChunkersListsTheRegistry(t *testing.T) {
	out := mustRun(t, "chunkers").stdout
	kinds := engine.ChunkerKinds()
	if len(kinds) == 0 {
		t.Fatal("no chunkers registered")
	}
	for _, k := range kinds {
		if !strings.Contains(out, k.Name) || !strings.Contains(out, k.Doc) {
			t.Errorf("chunkers output lacks %s (%s):\n%s", k.Name, k.Doc, out)
		}
	}
	if _, err := engine.LookupChunker(defaultChunker); err == nil && !strings.Contains(out, defaultChunker+" (default)") {
		t.Errorf("chunkers output does not mark %s as the default:\n%s", defaultChunker, out)
	}
}
