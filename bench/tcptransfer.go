package bench

import (
	"errors"
	"time"
)

// TCPTools are the tools RunTCPTransfer runs, in the order reports list
// them. "tcp" is one TCP connection carrying the file's bytes and nothing
// else, the most any TCP tool can do over the link; "rsync" is rsync -z
// (RsyncArgs) against a daemon. Both use CUBIC, Linux's default congestion
// control, whatever the host's default (net.ipv4.tcp_congestion_control)
// is, so that figures from different machines compare; the "-bbr"
// variants use the kernel's "bbr", where it has it.
var TCPTools = []string{"tcp", "tcp-bbr", "rsync", "rsync-bbr"}

// tcpTool is how RunTCPTransfer runs one of TCPTools.
type tcpTool struct {
	rsync      bool
	congestion string
}

var tcpTools = map[string]tcpTool{
	"tcp":       {congestion: "cubic"},
	"tcp-bbr":   {congestion: "bbr"},
	"rsync":     {rsync: true, congestion: "cubic"},
	"rsync-bbr": {rsync: true, congestion: "bbr"},
}

// ErrTUNLinkUnsupported is what the IP-level link's functions return on a
// system other than Linux, whose network namespaces and TUN devices it is
// built on.
var ErrTUNLinkUnsupported = errors.New("the IP-level link (TUN devices in network namespaces) needs Linux")

// TCPTransferSpec is one run of a TCP tool through the IP-level link: File
// sent with Tool from namespace A to a server in namespace B of a new
// TUNLink with Profile's rate, half its round trip and its loss each way,
// and pulled back from B to A when Pull is set.
type TCPTransferSpec struct {
	File    string
	Profile TransferProfile
	// Tool is one of TCPTools.
	Tool string
	Pull bool
	// Timeout bounds each of push and pull, as TransferSpec.Timeout
	// does; 0 is no bound.
	Timeout time.Duration
	// Seed seeds the link's random decisions. The same seed makes the
	// same decisions for the same packets, so a run repeats, but one seed
	// is one sample of where the losses fall: on a transfer of a few
	// seconds, whether an early loss costs a timeout moves the goodput by
	// half.
	Seed uint64
}
