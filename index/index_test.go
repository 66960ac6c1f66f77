package index_test

import (
	"path/filepath"
	"testing"

	"github.com/chunksync/chunksync/index"
	"github.com/chunksync/chunksync/index/indextest"
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

func TestDBConformance(t *testing.T) {
	indextest.Run(t, func(t *testing.T, dir string) indextest.Backend {
		db, err := index.OpenDB(filepath.Join(dir, "index.db"))
		if err != nil {
			t.Fatalf("OpenDB: %v", err)
		}
		return db
	})
}
