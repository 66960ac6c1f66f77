package index_test

import (
	"testing"

	"github.com/chunksync/chunksync/index"
	"github.com/chunksync/chunksync/index/storetest"
)

func TestDirStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, dir string) index.Store {
		s, err := index.OpenDirStore(dir)
		if err != nil {
			t.Fatalf("OpenDirStore: %v", err)
		}
		return s
	})
}
