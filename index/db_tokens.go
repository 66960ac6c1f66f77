package index

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// AddToken records the hash of a token under name, replacing the name of a
// hash already recorded.
func (db *DB) AddToken(ctx context.Context, hash [32]byte, name string) error {
	if err := checkTokenName(name); err != nil {
		return fmt.Errorf("add token %q: %w", name, err)
	}
	key := hash
	val := encodeTokenRecord(nil, name)
	if err := db.update(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).Put(key[:], val)
	}); err != nil {
		return fmt.Errorf("add token %q: %w", name, err)
	}
	return nil
}

// TokenName returns the name a token hash was added under, or
// ErrUnknownToken. Errors name the hash by its first bytes only.
func (db *DB) TokenName(ctx context.Context, hash [32]byte) (string, error) {
	var name string
	err := db.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketTokens).Get(hash[:])
		if v == nil {
			return ErrUnknownToken
		}
		var err error
		name, err = decodeTokenRecord(hash[:4], v)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("token %x…: %w", hash[:4], err)
	}
	return name, nil
}
