package transport

import (
	"bufio"
	"bytes"
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
)

// ErrAuth is wrapped by the client's error when the server refuses its token.
var ErrAuth = errors.New("authentication refused")

const tokensFile = "tokens"

// tokenHash is what the server keeps of a token.
func tokenHash(token string) [32]byte { return sha256.Sum256([]byte(token)) }

// NewToken creates a client token, records its hash (never the token) in
// dataDir under name, and returns the token. The server reads the tokens
// file on every connection, so a new token works without a restart.
func NewToken(dataDir, name string) (string, error) {
	if name == "" || strings.ContainsAny(name, " \t\r\n") {
		return "", fmt.Errorf("new token: name %q must be one word", name)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	token := "cs_" + base64.RawURLEncoding.EncodeToString(raw[:])
	h := tokenHash(token)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dataDir, tokensFile), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	if _, err := fmt.Fprintf(f, "%s %s\n", hex.EncodeToString(h[:]), name); err != nil {
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
	data, err := os.ReadFile(filepath.Join(dataDir, tokensFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read tokens: %w", err)
	}
	h := tokenHash(token)
	name := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			continue
		}
		want, err := hex.DecodeString(fields[0])
		if err != nil || len(want) != len(h) {
			continue
		}
		if subtle.ConstantTimeCompare(want, h[:]) == 1 {
			name = fields[1]
		}
	}
	if name == "" {
		return "", ErrAuth
	}
	return name, nil
}
