//go:build !linux

package bench

import (
	"context"
	"fmt"
	"strings"
)

// CheckTCPTool reports why RunTCPTransfer cannot run tool: on this system,
// ErrTUNLinkUnsupported for every tool of TCPTools.
func CheckTCPTool(tool string) error {
	if _, ok := tcpTools[tool]; !ok {
		return fmt.Errorf("tcp tool %q: want one of %s", tool, strings.Join(TCPTools, ", "))
	}
	return fmt.Errorf("tcp tool %s: %w", tool, ErrTUNLinkUnsupported)
}

// CheckTUNLink reports why a TUNLink cannot be made: on this system,
// ErrTUNLinkUnsupported.
func CheckTUNLink(context.Context) error { return ErrTUNLinkUnsupported }

// RunTCPTransfer runs a TCP tool through the IP-level link, which this
// system does not have: it returns ErrTUNLinkUnsupported.
func RunTCPTransfer(context.Context, string, TCPTransferSpec) ([]TransferResult, error) {
	return nil, fmt.Errorf("tcp transfer: %w", ErrTUNLinkUnsupported)
}
