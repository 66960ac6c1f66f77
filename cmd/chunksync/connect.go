package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	"github.com/chunksync/chunksync/transport"
)

// Environment variables that stand in for the connection flags.
const (
	envServer      = "CHUNKSYNC_SERVER"
	envToken       = "CHUNKSYNC_TOKEN"
	envFingerprint = "CHUNKSYNC_FINGERPRINT"
)

// defaultServer is where clients look for a server when neither --server
// nor CHUNKSYNC_SERVER says otherwise; it is also serve's default address.
const defaultServer = "127.0.0.1:4433"

// connectOptions say how to reach and trust a server; push, status and
// cancel share them.
type connectOptions struct {
	Server       string
	Token        string
	Fingerprint  string
	KnownServers string
	Timeout      time.Duration
	RetryFor     time.Duration
	CacheDir     string
}

// addFlags declares the connection flags on fs.
func (o *connectOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Server, "server", defaultServer, "server address, host:port (env "+envServer+")")
	fs.StringVar(&o.Token, "token", "", "client token from 'chunksync token new' (env "+envToken+")")
	fs.StringVar(&o.Fingerprint, "fingerprint", "", "pin the server's identity, as 'chunksync fingerprint' prints it (env "+envFingerprint+"); without it the server is trusted on first use through --known-servers")
	fs.StringVar(&o.KnownServers, "known-servers", "", "file remembering server identities for trust on first use (default $XDG_CONFIG_HOME/chunksync/known_servers, else ~/.config/chunksync/known_servers)")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Second, "give up connecting to the server after this long")
	fs.DurationVar(&o.RetryFor, "retry-for", 2*time.Minute, "keep re-dialling a dropped connection for this long before giving up")
	fs.StringVar(&o.CacheDir, "cache-dir", "", "where the manifests of the versions last pushed or pulled are remembered, so that a re-sync sends its chunk lists as deltas (default $XDG_CACHE_HOME/chunksync, else ~/.cache/chunksync; 'off' for none)")
}

// resolve fills the options the flags left unset: a flag wins over its
// environment variable, which wins over the default.
func (o *connectOptions) resolve(fs *pflag.FlagSet) error {
	fromEnv := func(flag, env string, dst *string) {
		if !fs.Changed(flag) {
			if v := os.Getenv(env); v != "" {
				*dst = v
			}
		}
	}
	fromEnv("server", envServer, &o.Server)
	fromEnv("token", envToken, &o.Token)
	fromEnv("fingerprint", envFingerprint, &o.Fingerprint)
	if o.Server == "" {
		return usagef("no server address: pass --server or set %s", envServer)
	}
	if o.Token == "" {
		return usagef("no token: pass --token or set %s (create one on the server with 'chunksync token new')", envToken)
	}
	switch o.CacheDir {
	case "off":
		o.CacheDir = ""
	case "":
		// No cache directory means no deltas, not an error.
		if dir, err := os.UserCacheDir(); err == nil {
			o.CacheDir = filepath.Join(dir, "chunksync")
		}
	}
	if o.Fingerprint == "" && o.KnownServers == "" {
		path, err := defaultKnownServers()
		if err != nil {
			return err
		}
		o.KnownServers = path
	}
	return nil
}

// defaultKnownServers returns where the known-servers file lives when
// --known-servers is not given.
func defaultKnownServers() (string, error) {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", errors.New("no home directory for the known-servers file: pass --known-servers or --fingerprint")
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "chunksync", "known_servers"), nil
}

// dataOptions say how the chunk data of a push or a pull travels.
type dataOptions struct {
	Streams int
	Conns   int
	FEC     string
}

// addFlags declares the data flags on fs.
func (o *dataOptions) addFlags(fs *pflag.FlagSet) {
	fs.IntVar(&o.Streams, "streams", 8, "parallel QUIC streams for chunk data")
	fs.IntVar(&o.Conns, "conns", 0, "QUIC connections the streams are spread over, 1 to --streams; 0 decides from the link: a push uses one until the link loses packets, then one per stream (from the start for 64 MiB or more over a round trip of 50 ms or more), a pull one per stream")
	fs.StringVar(&o.FEC, "fec", "auto", "forward error correction for chunk data, on the server's FEC port: auto (once the link loses packets), on or off")
}

// check refuses stream and connection counts and FEC modes the client
// cannot use.
func (o dataOptions) check() error {
	if o.Streams < 1 {
		return usagef("--streams %d: need at least 1", o.Streams)
	}
	if o.Conns < 0 || o.Conns > o.Streams {
		return usagef("--conns %d: want 0 (decide from the link) to --streams (%d)", o.Conns, o.Streams)
	}
	if _, err := o.fecMode(); err != nil {
		return err
	}
	return nil
}

// fecMode is --fec, auto when not given (commands without data flags).
func (o dataOptions) fecMode() (transport.FECMode, error) {
	if o.FEC == "" {
		return transport.FECAuto, nil
	}
	m, err := transport.ParseFECMode(o.FEC)
	if err != nil {
		return 0, usageError{fmt.Errorf("--fec: %w", err)}
	}
	return m, nil
}

// dial connects to the server; data and bwlimit (bytes per second, 0 for
// none) only matter for pushes and pulls. When it trusts a server on first
// use, it says so on notes, as ssh does.
func (o *connectOptions) dial(ctx context.Context, data dataOptions, bwlimit int64, notes io.Writer) (*transport.Client, error) {
	known := transport.KnownServers{Path: o.KnownServers}
	firstUse := false
	if o.Fingerprint == "" {
		fp, err := known.Lookup(o.Server)
		if err != nil {
			return nil, err
		}
		firstUse = fp == ""
	}
	fec, err := data.fecMode()
	if err != nil {
		return nil, err
	}
	c, err := transport.Dial(ctx, transport.ClientConfig{
		Addr:         o.Server,
		Token:        o.Token,
		Fingerprint:  o.Fingerprint,
		KnownServers: o.KnownServers,
		Streams:      data.Streams,
		Conns:        data.Conns,
		FEC:          fec,
		BWLimit:      bwlimit,
		DialTimeout:  o.Timeout,
		RetryFor:     o.RetryFor,
		CacheDir:     o.CacheDir,
	})
	if err != nil {
		// The transport's errors already name the server.
		return nil, err
	}
	if firstUse {
		if fp, err := known.Lookup(o.Server); err == nil && fp != "" {
			fmt.Fprintf(notes, "chunksync: trusted %s on first use: its identity %s is now remembered in %s\n", o.Server, fp, o.KnownServers)
		}
	}
	return c, nil
}
