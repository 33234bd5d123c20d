package kernel

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// NftListJSON runs `nft -j list <object...>` inside the namespace (for
// example "table", "ip", "kdive-hostport") and returns nft's JSON. An object
// that does not exist is an error wrapping ErrNotFound, so callers can tell
// "nothing programmed yet" from nft failing.
func (n *NetNS) NftListJSON(ctx context.Context, object ...string) ([]byte, error) {
	var out, errb bytes.Buffer
	args := append([]string{"-j", "list"}, object...)
	err := n.Do(func() error {
		cmd := exec.CommandContext(ctx, "nft", args...)
		cmd.Stdout, cmd.Stderr = &out, &errb
		return cmd.Run()
	})
	if err == nil {
		return out.Bytes(), nil
	}
	msg := strings.TrimSpace(errb.String())
	what := "nft list " + strings.Join(object, " ")
	// nft reports a missing table, chain, set or map with ENOENT's text.
	if strings.Contains(msg, "No such file or directory") {
		return nil, fmt.Errorf("%s in %s: %w", what, n, ErrNotFound)
	}
	if msg == "" {
		return nil, fmt.Errorf("%s in %s: %w", what, n, err)
	}
	return nil, fmt.Errorf("%s in %s: %w: %s", what, n, err, msg)
}
