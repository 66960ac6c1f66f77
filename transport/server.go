package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/semaphore"

	"github.com/chunksync/chunksync/engine"
	"github.com/chunksync/chunksync/index"
)

// ServerConfig configures a Server. Only DataDir is required.
type ServerConfig struct {
	// DataDir holds the identity, the tokens file, the index database and
	// the chunk store.
	DataDir string
	// FilesDir is the root that materialised files live under; clients
	// can never reach outside it. Default DataDir/files.
	FilesDir string
	// Listen is the UDP address to listen on; default 127.0.0.1:4433.
	Listen string
	// FECListen is the UDP address of the FEC port: a second port where
	// connections run over forward error correction (FECConn), for
	// clients on links that lose packets. The hello reply advertises its
	// port. "" (the default) is the port after Listen's on the same host,
	// or any free port when Listen's is 0, and the server serves without
	// one (and logs why) when that port cannot be had; NoFEC is none.
	// Any other address must be free.
	FECListen string
	// SessionIdle is how long an untouched upload session lives; default 24h.
	SessionIdle time.Duration
	// MaxStreams bounds the concurrent streams of one connection; default 64.
	MaxStreams int
	// MemoryBudget bounds the bytes that all streams together may hold for
	// chunks being received, verified or sent and for control requests
	// being read and decoded; default 256 MiB. A stream waits for its share.
	MemoryBudget int64
	// HandshakeTimeout bounds the time from connection to authenticated
	// hello; default 10s.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that sends no packet for this long
	// (QUIC's idle timeout); default 30s. Clients send keep-alives well
	// within it.
	IdleTimeout time.Duration
	// UnusedTimeout closes an authenticated connection that has had no
	// open stream for this long, which keep-alives do not prevent;
	// default 10 min. Clients dial again when they need one.
	UnusedTimeout time.Duration
	// StallTimeout bounds how long a stream may make no progress while the
	// server reads a request or a chunk from it or writes a reply or a
	// chunk to it; the stream is then refused and what it held released.
	// A data stream waiting between chunks is not stalled. Default 30s.
	StallTimeout time.Duration
	// CommitWait is how long a commit that names chunks the store lacks
	// waits for the next of them to arrive before it is refused: clients
	// send the commit while their last chunks travel. Default 5s.
	CommitWait time.Duration
	// MaxSessionsPerToken bounds the open upload sessions of one token; an
	// open beyond it is refused until one ends. Default 128.
	MaxSessionsPerToken int
	// MaxConnsPerToken bounds the open connections of one token; a hello
	// beyond it is refused. Default 256.
	MaxConnsPerToken int
	// MaxManifestChunks bounds the chunks of one file: a commit or a
	// missing request beyond it is refused. Each chunk of a commit costs
	// about 40 bytes of memory while it is checked. Default and most
	// engine.MaxManifestChunks (16 Mi).
	MaxManifestChunks int
	// KeepVersions is how many versions of each path the server keeps;
	// a commit prunes older ones. Default 10.
	KeepVersions int
	// ChunkCache is the bytes of raw chunks the server keeps to read
	// again without decompressing them (see rawChunks); default 64 MiB,
	// negative for none.
	ChunkCache int64
	// CollectEvery is how often the server prunes versions and collects
	// the chunks that no version or open session refers to; default 1h.
	CollectEvery time.Duration
	// Logger receives one line per connection and per refused request;
	// default: discard.
	Logger *slog.Logger

	// version is the newest protocol version served, ProtocolVersion
	// when 0; tests set 1 to play a server from before version 2.
	version uint32
	// noDatagrams, set by tests, plays a server from before heartbeats,
	// which took no QUIC datagrams.
	noDatagrams bool
	// helloDelay, set by tests, is how long the server reads a hello
	// before it answers, as over a long round trip.
	helloDelay time.Duration
	// afterOpen, set by tests, is called once an open has opened or
	// re-attached to its session (reattached), before the request goes on.
	afterOpen func(reattached bool)
	// Checkpoint, when set, is called with the name of each point of a
	// chunk write, a commit or a garbage collection that the server
	// passes (the Checkpoint* constants here,
	// index.CheckpointChunkHalfWritten and index.CheckpointGCUnrecorded),
	// so that a crash test can kill the server exactly there. Servers in
	// use leave it nil.
	Checkpoint func(point string)
}

// The points of a commit and a collection that ServerConfig.Checkpoint
// hears of, a commit's in the order it passes them.
const (
	// CheckpointCommitAssembled: the new version is assembled, verified
	// and synced under a temporary name, nothing recorded, the old
	// version still in place.
	CheckpointCommitAssembled = "commit-assembled"
	// CheckpointCommitRecorded: the version is recorded and marked
	// pending and its upload session ended, in one transaction; the old
	// version is still in place.
	CheckpointCommitRecorded = "commit-recorded"
	// CheckpointCommitRenamed: the new version is in place, still
	// pending, old versions not yet pruned, the reply not sent.
	CheckpointCommitRenamed = "commit-renamed"
	// CheckpointGCPruned: old versions are pruned and their chunks not
	// yet collected.
	CheckpointGCPruned = "gc-pruned"
)

// checkpoint tells cfg.Checkpoint that the server passes point.
func (s *Server) checkpoint(point string) {
	if s.cfg.Checkpoint != nil {
		s.cfg.Checkpoint(point)
	}
}

// NoFEC, as ServerConfig.FECListen, serves no FEC port.
const NoFEC = "off"

func (c *ServerConfig) setDefaults() {
	if c.FilesDir == "" {
		c.FilesDir = filepath.Join(c.DataDir, "files")
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:4433"
	}
	if c.SessionIdle <= 0 {
		c.SessionIdle = 24 * time.Hour
	}
	if c.MaxStreams <= 0 {
		c.MaxStreams = 64
	}
	if c.MemoryBudget <= 0 {
		c.MemoryBudget = 256 << 20
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = defaultIdleTimeout
	}
	if c.UnusedTimeout <= 0 {
		c.UnusedTimeout = defaultUnusedTimeout
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = defaultStallTimeout
	}
	if c.CommitWait <= 0 {
		c.CommitWait = 5 * time.Second
	}
	if c.MaxSessionsPerToken <= 0 {
		c.MaxSessionsPerToken = defaultMaxSessionsPerToken
	}
	if c.MaxConnsPerToken <= 0 {
		c.MaxConnsPerToken = defaultMaxConnsPerToken
	}
	if c.MaxManifestChunks <= 0 || c.MaxManifestChunks > engine.MaxManifestChunks {
		c.MaxManifestChunks = engine.MaxManifestChunks
	}
	if c.KeepVersions <= 0 {
		c.KeepVersions = 10
	}
	if c.ChunkCache == 0 {
		c.ChunkCache = defaultChunkCache
	}
	if c.CollectEvery <= 0 {
		c.CollectEvery = time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.version == 0 {
		c.version = ProtocolVersion
	}
}

// The index database and the chunk store in the data directory.
const (
	indexFile = "index.db"
	chunksDir = "chunks"
)

// Server accepts chunksync clients over QUIC.
type Server struct {
	cfg   ServerConfig
	db    *index.DB
	store *index.DirStore
	// chunks reads the store through the cache of raw chunks.
	chunks *rawChunks
	// gc is the way to the index and the store for every presence check,
	// chunk write and new version, so that garbage collection can run
	// beside pushes.
	gc     *index.Collector
	files  *os.Root
	fp     string
	udp    *net.UDPConn
	tr     *quic.Transport
	ln     *quic.Listener
	fec    *FECConn // the FEC port's socket; nil without one
	fecTr  *quic.Transport
	fecLn  *quic.Listener
	memory *semaphore.Weighted
	log    *slog.Logger

	// commitMu guards commits, the locks that serialise commits of the
	// same path.
	commitMu sync.Mutex
	commits  map[string]*pathLock

	bases baseCache
	// asm assembles pushed files while their chunks arrive.
	asm assemblies
	// arrivals wakes the commits that wait for their last chunks.
	arrivals arrivals

	// conns counts the connections of every token.
	conns tokenConns
	// openMu serialises the opening of upload sessions, so that two opens
	// of one token cannot both pass its session limit.
	openMu sync.Mutex
	// committing are the sessions with a commit under way, which an open
	// waits for rather than re-attach to what the commit is about to end.
	committing sessionCommits
}

// NewServer opens the data directory (creating what is missing) and starts
// listening. Call Serve to accept clients and Close to release everything.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("server: no data directory")
	}
	cfg.setDefaults()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	cert, err := LoadIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		fp:      Fingerprint(cert.Certificate[0]),
		memory:  semaphore.NewWeighted(cfg.MemoryBudget),
		log:     cfg.Logger,
		commits: make(map[string]*pathLock),
	}
	s.asm = assemblies{s: s, running: make(map[string]*assembly)}
	s.committing.under = make(map[string]*commitsOf)
	// The index first: its lock keeps out a second server on the same
	// data directory before anything below removes the temporary files
	// that the running server is writing.
	if s.db, err = index.OpenDB(filepath.Join(cfg.DataDir, indexFile)); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if err := os.MkdirAll(cfg.FilesDir, 0o755); err != nil {
		s.Close()
		return nil, fmt.Errorf("server: files root: %w", err)
	}
	if err := removeTempFiles(cfg.FilesDir); err != nil {
		s.Close()
		return nil, fmt.Errorf("server: files root: %w", err)
	}
	if s.files, err = os.OpenRoot(cfg.FilesDir); err != nil {
		s.Close()
		return nil, fmt.Errorf("server: files root: %w", err)
	}
	if s.store, err = index.OpenDirStore(filepath.Join(cfg.DataDir, chunksDir), index.WithCheckpoint(cfg.Checkpoint)); err != nil {
		s.Close()
		return nil, fmt.Errorf("server: %w", err)
	}
	s.gc = index.NewCollector(s.db, s.store)
	s.chunks = newRawChunks(s.store, cfg.ChunkCache)
	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{ALPN},
	}
	addr, err := net.ResolveUDPAddr("udp", cfg.Listen)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("server: listen on %s: %w", cfg.Listen, err)
	}
	if s.udp, err = net.ListenUDP("udp", addr); err != nil {
		s.Close()
		return nil, fmt.Errorf("server: listen on %s: %w", cfg.Listen, err)
	}
	resetKey, err := statelessResetKey(cert)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("server: %w", err)
	}
	quicConf := &quic.Config{
		MaxIncomingStreams:             int64(cfg.MaxStreams),
		MaxIncomingUniStreams:          -1,
		MaxIdleTimeout:                 cfg.IdleTimeout,
		HandshakeIdleTimeout:           cfg.HandshakeTimeout,
		InitialStreamReceiveWindow:     2 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 8 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
		DisablePathMTUDiscovery:        true,
		// For the clients' heartbeats, which serveConn discards.
		EnableDatagrams: !cfg.noDatagrams,
	}
	s.tr = &quic.Transport{Conn: s.udp, StatelessResetKey: resetKey}
	if s.ln, err = s.tr.Listen(tlsConf, quicConf); err != nil {
		s.Close()
		return nil, fmt.Errorf("server: listen on %s: %w", cfg.Listen, err)
	}
	if err := s.listenFEC(addr, tlsConf, quicConf, resetKey); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// listenFEC opens the FEC port that cfg.FECListen asks for, next to the
// main port at addr.
func (s *Server) listenFEC(addr *net.UDPAddr, tlsConf *tls.Config, quicConf *quic.Config, resetKey *quic.StatelessResetKey) error {
	if s.cfg.FECListen == NoFEC || s.cfg.version < 2 {
		return nil
	}
	implicit := s.cfg.FECListen == ""
	var fecAddr *net.UDPAddr
	if implicit {
		port := s.udp.LocalAddr().(*net.UDPAddr).Port + 1
		if addr.Port == 0 || port > 65535 {
			port = 0
		}
		fecAddr = &net.UDPAddr{IP: addr.IP, Port: port, Zone: addr.Zone}
	} else {
		var err error
		if fecAddr, err = net.ResolveUDPAddr("udp", s.cfg.FECListen); err != nil {
			return fmt.Errorf("server: FEC port %s: %w", s.cfg.FECListen, err)
		}
	}
	udp, err := net.ListenUDP("udp", fecAddr)
	if err != nil && implicit {
		// A port that is taken should not keep the server from
		// serving: clients then stay on plain QUIC.
		s.log.Warn("no FEC port: clients on lossy links stay on plain QUIC", "addr", fecAddr.String(), "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("server: FEC port %s: %w", s.cfg.FECListen, err)
	}
	if s.fec, err = NewFECConn(udp); err != nil {
		udp.Close()
		return fmt.Errorf("server: FEC port %s: %w", fecAddr, err)
	}
	s.fecTr = &quic.Transport{Conn: s.fec, StatelessResetKey: resetKey}
	if s.fecLn, err = s.fecTr.Listen(tlsConf, quicConf); err != nil {
		return fmt.Errorf("server: FEC port %s: %w", fecAddr, err)
	}
	return nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// FECAddr is the address of the server's FEC port, nil when it has none.
func (s *Server) FECAddr() net.Addr {
	if s.fecLn == nil {
		return nil
	}
	return s.fecLn.Addr()
}

// fecPort is the port the hello reply advertises, 0 for none.
func (s *Server) fecPort() uint16 {
	if a, ok := s.FECAddr().(*net.UDPAddr); ok {
		return uint16(a.Port)
	}
	return 0
}

// Fingerprint is the server's identity, for clients to pin.
func (s *Server) Fingerprint() string { return s.fp }

// MemoryLimit is what the server's heap should stay under: its memory
// budget, its chunk cache, and memoryHeadroom for what neither counts.
// A process that runs a server sets it as the Go runtime's soft memory
// limit (debug.SetMemoryLimit), so that the collector reclaims the garbage
// that many requests leave before the heap grows to twice what is live:
// 32 clients took a server with a 64 MiB budget and a 16 MiB cache to
// 353 MiB of heap without it, 194 MiB with it (transport.TestLoad).
func (s *Server) MemoryLimit() int64 {
	return s.cfg.MemoryBudget + s.cfg.ChunkCache + memoryHeadroom
}

// memoryHeadroom is the heap a server holds beyond its budget and cache:
// the zstd delta coders, one per core at most, with their windows and
// tables (about 70 MiB on two cores under load); QUIC's buffers of each
// connection; the index's; and the runtime's.
const memoryHeadroom = 128 << 20

// Close stops listening and closes the index and the files root. Call it
// after Serve has returned.
func (s *Server) Close() error {
	var errs []error
	// Closing the socket ourselves frees the port at once, so a restarted
	// server can bind it again.
	if s.ln != nil {
		errs = append(errs, s.ln.Close())
	}
	if s.tr != nil {
		errs = append(errs, s.tr.Close())
	}
	if s.udp != nil {
		s.udp.Close()
	}
	if s.fecLn != nil {
		errs = append(errs, s.fecLn.Close())
	}
	if s.fecTr != nil {
		errs = append(errs, s.fecTr.Close())
	}
	if s.fec != nil {
		s.fec.Close()
	}
	if s.db != nil {
		errs = append(errs, s.db.Close())
	}
	if s.files != nil {
		errs = append(errs, s.files.Close())
	}
	return errors.Join(errs...)
}

// Serve finishes the commits that a crash interrupted, then accepts clients
// until ctx is cancelled, closes every connection and waits for their
// handlers.
func (s *Server) Serve(ctx context.Context) error {
	s.finishCommits(ctx)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() { s.expireSessions(ctx) })
	wg.Go(func() { s.collectPeriodically(ctx) })
	// The FEC port serves beside the main one; a failure of either ends
	// both.
	var fecErr error
	if s.fecLn != nil {
		wg.Go(func() {
			fecErr = s.accept(ctx, s.fecLn, &wg)
			cancel()
		})
	}
	err := s.accept(ctx, s.ln, &wg)
	cancel()
	wg.Wait()
	s.asm.stop()
	return errors.Join(err, fecErr)
}

// accept serves the connections of ln, each on a goroutine of wg, until
// ctx ends (nil) or accepting fails.
func (s *Server) accept(ctx context.Context, ln *quic.Listener, wg *sync.WaitGroup) error {
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("server: accept on %s: %w", ln.Addr(), err)
		}
		wg.Go(func() { s.serveConn(ctx, conn) })
	}
}

func (s *Server) expireSessions(ctx context.Context) {
	period := min(s.cfg.SessionIdle/4, time.Minute)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			ids, err := s.db.ExpireSessions(ctx, now.Add(-s.cfg.SessionIdle))
			if err != nil {
				s.log.Error("expire sessions", "err", err)
			}
			for _, id := range ids {
				s.asm.drop(id)
				s.log.Info("session expired", "session", id)
			}
		}
	}
}

// collectPeriodically prunes and collects every cfg.CollectEvery.
func (s *Server) collectPeriodically(ctx context.Context) {
	t := time.NewTicker(s.cfg.CollectEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.Collect(ctx); err != nil && !errors.Is(err, index.ErrCollecting) && ctx.Err() == nil {
				s.log.Error("garbage collection", "err", err)
			}
		}
	}
}

// Collect prunes every path to the newest cfg.KeepVersions versions and
// deletes the chunks that no version or open session refers to. It is
// safe while pushes run; a second call while one runs gets
// index.ErrCollecting.
func (s *Server) Collect(ctx context.Context) (index.GCStats, error) {
	pruned, err := s.db.PruneAll(ctx, s.cfg.KeepVersions)
	if err != nil {
		return index.GCStats{}, fmt.Errorf("prune versions: %w", err)
	}
	s.checkpoint(CheckpointGCPruned)
	st, err := s.gc.Collect(ctx, index.CollectOptions{Checkpoint: s.cfg.Checkpoint})
	if err != nil {
		return st, fmt.Errorf("collect garbage: %w", err)
	}
	s.log.Info("garbage collected", "versions_pruned", pruned, "chunks_marked", st.ChunksMarked,
		"chunks_deleted", st.ChunksDeleted, "bytes_freed", st.StoredBytesFreed, "orphans", st.OrphansDeleted, "took", st.Duration)
	return st, nil
}

// peer is one authenticated connection.
type peer struct {
	conn  *quic.Conn
	owner string
	log   *slog.Logger
}

func (s *Server) serveConn(ctx context.Context, conn *quic.Conn) {
	dctx, stopDiscard := context.WithCancel(ctx)
	var discard sync.WaitGroup
	discard.Go(func() { discardDatagrams(dctx, conn) })
	defer discard.Wait()
	defer stopDiscard()
	log := s.log.With("remote", conn.RemoteAddr().String())
	owner, err := s.handshake(ctx, conn)
	if err != nil {
		log.Warn("refused connection", "err", err)
		code := quic.ApplicationErrorCode(codeProtocol)
		switch {
		case errors.Is(err, ErrAuth):
			code = codeUnauthorized
		case errors.Is(err, errBusy):
			code = codeBusy
		}
		conn.CloseWithError(code, err.Error())
		return
	}
	defer s.conns.leave(owner)
	p := &peer{conn: conn, owner: owner, log: log.With("token", owner)}
	p.log.Info("connected")
	watch := watchStreams(conn, s.cfg.UnusedTimeout)
	defer watch.stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			if ctx.Err() != nil {
				conn.CloseWithError(codeShutdown, "server shutting down")
			}
			p.log.Info("disconnected", "err", err)
			return
		}
		watch.opened()
		wg.Go(func() {
			defer watch.closed()
			s.serveStream(ctx, p, st)
		})
	}
}

// discardDatagrams receives the datagrams of conn, the clients'
// heartbeats, and drops them, until conn closes or ctx ends. Unread,
// quic-go would keep up to 128 of them, of up to a packet each, for the
// connection's life: memory that a client could hold outside the budget,
// even before its hello.
func discardDatagrams(ctx context.Context, conn *quic.Conn) {
	for {
		if _, err := conn.ReceiveDatagram(ctx); err != nil {
			return
		}
	}
}

// handshake reads the hello on the connection's first stream, checks the
// version and the token, and answers.
func (s *Server) handshake(ctx context.Context, conn *quic.Conn) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	st, err := conn.AcceptStream(ctx)
	if err != nil {
		return "", fmt.Errorf("no hello: %w", err)
	}
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	var kind [1]byte
	if _, err := io.ReadFull(st, kind[:]); err != nil {
		return "", fmt.Errorf("no hello: %w", err)
	}
	if kind[0] != streamHello {
		return "", fmt.Errorf("%w: first stream is of kind %d, not hello", errMalformed, kind[0])
	}
	_, body, err := readLastFrame(st, 1024)
	if err != nil {
		return "", fmt.Errorf("hello: %w", err)
	}
	h, err := decodeHello(body)
	if err != nil {
		return "", fmt.Errorf("hello: %w", err)
	}
	if s.cfg.helloDelay > 0 {
		select {
		case <-time.After(s.cfg.helloDelay):
		case <-ctx.Done():
			return "", fmt.Errorf("hello: %w", ctx.Err())
		}
	}
	if h.Version < minProtocolVersion || h.Version > s.cfg.version {
		msg := fmt.Sprintf("protocol version %d not supported; this server speaks %d to %d", h.Version, minProtocolVersion, s.cfg.version)
		if s.cfg.version == 1 {
			// As servers before version 2 said it.
			msg = fmt.Sprintf("protocol version %d not supported; this server speaks %d", h.Version, 1)
		}
		writeFrame(st, statusError, []byte(msg))
		return "", fmt.Errorf("hello: %s", msg)
	}
	owner, err := authenticate(s.cfg.DataDir, h.Token)
	if err != nil {
		writeFrame(st, statusAuth, []byte("token refused"))
		return "", err
	}
	if err := s.conns.admit(owner, s.cfg.MaxConnsPerToken); err != nil {
		// Not statusError, which a client takes for a refused version.
		writeFrame(st, statusBusy, []byte(err.Error()))
		return "", err
	}
	reply := helloReply{Version: h.Version, MaxChunkSize: engine.MaxChunkSize, MaxStreams: uint32(s.cfg.MaxStreams), FECPort: s.fecPort()}
	if err := writeFrame(st, statusOK, reply.encode()); err != nil {
		s.conns.leave(owner)
		return "", fmt.Errorf("hello reply: %w", err)
	}
	return owner, nil
}

func (s *Server) serveStream(ctx context.Context, p *peer, st *quic.Stream) {
	var kind [1]byte
	// A stream counts as open once a later one is: this one may never
	// carry a byte.
	if _, err := io.ReadFull(s.stalling(st), kind[:]); err != nil {
		st.CancelRead(codeProtocol)
		st.CancelWrite(codeProtocol)
		return
	}
	switch kind[0] {
	case streamControl:
		s.serveControl(ctx, p, st)
	case streamData:
		s.serveData(ctx, p, st)
	case streamFetch:
		s.serveFetch(ctx, p, st)
	default:
		p.log.Warn("refused stream", "kind", kind[0])
		st.CancelRead(codeProtocol)
		st.CancelWrite(codeProtocol)
	}
}

// removeTempFiles deletes the temporary files of pushes and commits that
// a crash interrupted.
func removeTempFiles(root string) error {
	temps, err := tempFiles(root)
	if err != nil {
		return err
	}
	for _, name := range temps {
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale temporary file: %w", err)
		}
	}
	return nil
}

// tempFiles returns the paths of the commits' temporary files under root.
func tempFiles(root string) ([]string, error) {
	var temps []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && isTempName(d.Name()) {
			temps = append(temps, path)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("find temporary files under %s: %w", root, err)
	}
	return temps, nil
}
