package transport

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chunksync/chunksync/engine"
)

func TestNewToken(t *testing.T) {
	ts := startServer(t, ServerConfig{}) // records a token named "test"
	dir := ts.cfg.DataDir

	alice, err := NewToken(dir, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if alice == ts.token {
		t.Fatal("NewToken returned the token it made before")
	}
	// The running server accepts the new token, and its sessions belong to
	// the token's name.
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Token = alice })
	if err != nil {
		t.Fatalf("hello with the new token: %v", err)
	}
	up, err := openSession(context.Background(), c, engine.UploadSpec{Path: "a.bin", Size: 1, Chunker: rabin(t)})
	if err != nil {
		t.Fatal(err)
	}
	up.Close()
	if s, err := ts.db.Session(context.Background(), up.ID()); err != nil || s.Owner != "alice" {
		t.Fatalf("session of the new token: owner %q, %v; want alice", s.Owner, err)
	}

	for _, name := range []string{"alice", "test"} {
		_, err := NewToken(dir, name)
		if !errors.Is(err, ErrTokenNameTaken) || !strings.Contains(err.Error(), `"`+name+`"`) {
			t.Errorf("NewToken(%q) again: %v; want ErrTokenNameTaken naming it", name, err)
		}
	}

	fi, err := os.Stat(filepath.Join(dir, tokensFile))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("tokens file mode %v, want 0600", perm)
	}
	data, err := os.ReadFile(filepath.Join(dir, tokensFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{ts.token, alice} {
		if strings.Contains(string(data), strings.TrimPrefix(tok, "cs_")) {
			t.Errorf("tokens file holds a token in clear:\n%s", data)
		}
	}
	if got := parseTokens(data); len(got) != 2 {
		t.Errorf("tokens file holds %d entries after refused duplicates, want 2:\n%s", len(got), data)
	}
}

func TestNewTokenRefusesNames(t *testing.T) {
	dir := t.TempDir()
	for name, tokenName := range map[string]string{
		"empty":          "",
		"two words":      "two words",
		"tab":            "a\tb",
		"newline":        "a\nb",
		"no-break space": "a\u00a0b",
		"invalid UTF-8":  "a\xffb",
		"too long":       strings.Repeat("n", maxTokenNameLen+1),
	} {
		if _, err := NewToken(dir, tokenName); err == nil {
			t.Errorf("NewToken accepted a name that is %s", name)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, tokensFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused names wrote the tokens file: %v", err)
	}
}

// TestTokenNameFitsSession checks that the longest name NewToken accepts
// can own an upload session.
func TestTokenNameFitsSession(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	name := strings.Repeat("é", maxTokenNameLen/2)
	tok, err := NewToken(ts.cfg.DataDir, name)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ts.dial(t, func(cfg *ClientConfig) { cfg.Token = tok })
	if err != nil {
		t.Fatal(err)
	}
	up, err := openSession(context.Background(), c, engine.UploadSpec{Path: "a.bin", Size: 1, Chunker: rabin(t)})
	if err != nil {
		t.Fatalf("open upload as a token of %d bytes of name: %v", len(name), err)
	}
	up.Close()
}
