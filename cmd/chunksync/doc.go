// Command chunksync keeps large, changing files in sync with a chunksync
// server while sending as few bytes as possible.
//
// It is thin wiring: engine cuts, pushes and pulls files, transport speaks
// QUIC to the server, index keeps the server's state. This package owns
// only the flags, the environment, the terminal and JSON output, and the
// exit codes:
//
//	0   success
//	1   any other error
//	2   usage: unknown command or flag, wrong arguments, bad flag value
//	3   interrupted (SIGINT or SIGTERM): a push or pull stopped part-way and can be resumed
//	4   verify found problems in the data directory
//	10  the server could not be reached
//	11  the server refused the token, or its identity was refused
package main
