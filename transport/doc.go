// Package transport carries chunksync over QUIC: the server and the client,
// the wire protocol and its framing (docs/PROTOCOL.md), the server's TLS
// identity and the client's pinning of it, token authentication, the
// scheduling of chunk data over parallel streams, and the bandwidth limit.
//
// Client implements engine.Remote; Server stores what clients send through
// the index package.
package transport
