package transport

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
)

// ErrIdentity is wrapped by every refusal of the server's identity: a
// fingerprint that differs from the pinned or remembered one, or an unknown
// server when nothing lets the client trust it.
var ErrIdentity = errors.New("server identity refused")

const (
	identityDir  = "identity"
	keyFile      = "key.pem"
	certFile     = "cert.pem"
	fingerprintP = "sha256:"
)

// Fingerprint returns the pinning form of a certificate: "sha256:" and the
// hex SHA-256 of its DER bytes.
func Fingerprint(certDER []byte) string {
	sum := sha256.Sum256(certDER)
	return fingerprintP + hex.EncodeToString(sum[:])
}

// normalizeFingerprint accepts a fingerprint with or without its prefix,
// in either case and with optional colons.
func normalizeFingerprint(fp string) string {
	fp = strings.ToLower(strings.ReplaceAll(strings.TrimSpace(fp), ":", ""))
	fp = strings.TrimPrefix(fp, "sha256")
	return fingerprintP + fp
}

// LoadIdentity returns the server's TLS certificate kept in dataDir,
// creating a new key and self-signed certificate on first use. It refuses a
// private key file that other users can read.
func LoadIdentity(dataDir string) (tls.Certificate, error) {
	dir := filepath.Join(dataDir, identityDir)
	kp, cp := filepath.Join(dir, keyFile), filepath.Join(dir, certFile)
	if _, err := os.Stat(kp); errors.Is(err, os.ErrNotExist) {
		if err := createIdentity(dir, kp, cp); err != nil {
			return tls.Certificate{}, err
		}
	}
	fi, err := os.Stat(kp)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server identity: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return tls.Certificate{}, fmt.Errorf("server identity: key %s has mode %#o: others may read it; chmod 600 it", kp, fi.Mode().Perm())
	}
	cert, err := tls.LoadX509KeyPair(cp, kp)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server identity in %s: %w", dir, err)
	}
	return cert, nil
}

// statelessResetKey derives the key of the server's QUIC stateless resets
// from its identity's private key. Being the same across restarts, it lets
// a restarted server answer the packets of its predecessor's connections
// with resets that their clients accept: a client whose server crashed
// then re-dials at its next packet instead of waiting for its idle
// timeout (20 s) to notice.
func statelessResetKey(cert tls.Certificate) (*quic.StatelessResetKey, error) {
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("server identity: stateless reset key: %w", err)
	}
	key := quic.StatelessResetKey(sha256.Sum256(append([]byte("chunksync stateless reset key\x00"), der...)))
	return &key, nil
}

// ReadFingerprint returns the fingerprint of the identity kept in dataDir
// without creating one.
func ReadFingerprint(dataDir string) (string, error) {
	pemBytes, err := os.ReadFile(filepath.Join(dataDir, identityDir, certFile))
	if err != nil {
		return "", fmt.Errorf("server identity: %w (start the server once to create it)", err)
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "CERTIFICATE" {
		return "", fmt.Errorf("server identity: %s holds no certificate", filepath.Join(dataDir, identityDir, certFile))
	}
	return Fingerprint(block.Bytes), nil
}

func createIdentity(dir, keyPath, certPath string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create server identity: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("create server identity: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return fmt.Errorf("create server identity: %w", err)
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "chunksync server " + host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(100, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"chunksync"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create server identity: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("create server identity: %w", err)
	}
	// The certificate goes first: a key without a certificate would be
	// taken for an identity on the next start.
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("create server identity: %w", err)
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("create server identity: %w", err)
	}
	return nil
}

// writeFileAtomic writes data to a temporary file beside path, fsyncs it and
// renames it into place.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// KnownServers is a file of "address fingerprint" lines, like SSH's
// known_hosts: a server is trusted on first use and must keep its identity.
type KnownServers struct {
	Path string
}

// Lookup returns the fingerprint remembered for addr, or "" when there is none.
func (k KnownServers) Lookup(addr string) (string, error) {
	data, err := os.ReadFile(k.Path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("known servers: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[0] == addr {
			return normalizeFingerprint(fields[1]), nil
		}
	}
	return "", nil
}

// Remember records fp for addr.
func (k KnownServers) Remember(addr, fp string) error {
	if err := os.MkdirAll(filepath.Dir(k.Path), 0o700); err != nil {
		return fmt.Errorf("known servers: %w", err)
	}
	f, err := os.OpenFile(k.Path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("known servers: %w", err)
	}
	if _, err := fmt.Fprintf(f, "%s %s\n", addr, fp); err != nil {
		f.Close()
		return fmt.Errorf("known servers: %w", err)
	}
	return f.Close()
}

// clientTLS returns a TLS configuration that accepts exactly one server
// certificate: the pinned fingerprint, or the one remembered in known, or,
// when neither exists and known is set, the first one seen (then remembered).
func clientTLS(addr, pinned string, known *KnownServers) (*tls.Config, error) {
	want := ""
	if pinned != "" {
		want = normalizeFingerprint(pinned)
	} else if known != nil {
		fp, err := known.Lookup(addr)
		if err != nil {
			return nil, err
		}
		want = fp
	}
	if want == "" && known == nil {
		return nil, fmt.Errorf("%w: no fingerprint given for %s and no known-servers file to trust it on first use", ErrIdentity, addr)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		ServerName: "chunksync",
		// Verification is by pinned fingerprint, not by a CA chain: the
		// server's certificate is self-signed.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return fmt.Errorf("%w: %s sent no certificate", ErrIdentity, addr)
			}
			got := Fingerprint(raw[0])
			switch {
			case want == "":
				if err := known.Remember(addr, got); err != nil {
					return err
				}
				want = got
				return nil
			case got != want:
				if pinned != "" {
					return fmt.Errorf("%w: %s presented %s but --fingerprint pins %s", ErrIdentity, addr, got, want)
				}
				return fmt.Errorf("%w: %s presented %s but %s remembers %s: the server's identity CHANGED (if that is expected, remove its line from %s)", ErrIdentity, addr, got, known.Path, want, known.Path)
			}
			return nil
		},
	}, nil
}
