package transport

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// ErrAuth is wrapped by the client's error when the server refuses its token.
var ErrAuth = errors.New("authentication refused")

// ErrTokenNameTaken is returned, wrapped with the name, by NewToken for a
// name the tokens file already holds: upload sessions belong to a token's
// name, so two tokens of one name would share them.
var ErrTokenNameTaken = errors.New("token name already in use")

const tokensFile = "tokens"

// maxTokenNameLen bounds a token's name, which becomes the owner of the
// upload sessions the token opens; the index refuses longer owners.
const maxTokenNameLen = 256

// tokenHash is what the server keeps of a token.
func tokenHash(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// tokenEntry is one line of the tokens file: "<hex hash> <name>".
type tokenEntry struct {
	hash [32]byte
	name string
}

// readTokens returns the entries of the tokens file in dataDir; a missing
// file holds none.
func readTokens(dataDir string) ([]tokenEntry, error) {
	data, err := os.ReadFile(filepath.Join(dataDir, tokensFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read tokens: %w", err)
	}
	return parseTokens(data), nil
}

// parseTokens decodes the lines of a tokens file, skipping those that do
// not parse.
func parseTokens(data []byte) []tokenEntry {
	var entries []tokenEntry
	for line := range strings.Lines(string(data)) {
		fields := strings.Fields(line)
		if len(fields) != 2 {
			continue
		}
		e := tokenEntry{name: fields[1]}
		if len(fields[0]) != hex.EncodedLen(len(e.hash)) {
			continue
		}
		if _, err := hex.Decode(e.hash[:], []byte(fields[0])); err != nil {
			continue
		}
		entries = append(entries, e)
	}
	return entries
}

// appendTokenLine appends the tokens file line of e to b.
func appendTokenLine(b []byte, e tokenEntry) []byte {
	b = hex.AppendEncode(b, e.hash[:])
	b = append(b, ' ')
	b = append(b, e.name...)
	return append(b, '\n')
}

// checkTokenName refuses a name that the tokens file cannot hold as one
// field or that an upload session cannot have as its owner.
func checkTokenName(name string) error {
	switch {
	case name == "" || strings.IndexFunc(name, unicode.IsSpace) >= 0:
		return fmt.Errorf("name %q must be one word", name)
	case !utf8.ValidString(name):
		return fmt.Errorf("name %q is not valid UTF-8", name)
	case len(name) > maxTokenNameLen:
		return fmt.Errorf("name of %d bytes is longer than %d", len(name), maxTokenNameLen)
	}
	return nil
}

// newTokenMu serialises NewToken within a process. Two processes that add
// a token of the same name at the same moment can both succeed: the check
// guards against an administrator's slip, not against a race.
var newTokenMu sync.Mutex

// NewToken creates a client token, records its hash (never the token) in
// dataDir under name, and returns the token. The name must be one word and
// new to dataDir: it refuses a name already recorded with an error wrapping
// ErrTokenNameTaken. The server reads the tokens file on every connection,
// so a new token works without a restart.
func NewToken(dataDir, name string) (string, error) {
	if err := checkTokenName(name); err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	newTokenMu.Lock()
	defer newTokenMu.Unlock()
	entries, err := readTokens(dataDir)
	if err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	for _, e := range entries {
		if e.name == name {
			return "", fmt.Errorf("new token: name %q: %w", name, ErrTokenNameTaken)
		}
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	token := "cs_" + base64.RawURLEncoding.EncodeToString(raw[:])
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dataDir, tokensFile), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	if _, err := f.Write(appendTokenLine(nil, tokenEntry{hash: tokenHash(token), name: name})); err != nil {
		f.Close()
		return "", fmt.Errorf("new token: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("new token: %w", err)
	}
	return token, f.Close()
}

// authenticate returns the name of the token, comparing its hash with every
// recorded hash in constant time.
func authenticate(dataDir, token string) (string, error) {
	entries, err := readTokens(dataDir)
	if err != nil {
		return "", err
	}
	h := tokenHash(token)
	name := ""
	for _, e := range entries {
		if subtle.ConstantTimeCompare(e.hash[:], h[:]) == 1 {
			name = e.name
		}
	}
	if name == "" {
		return "", ErrAuth
	}
	return name, nil
}
