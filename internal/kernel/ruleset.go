package kernel

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// RulesetTool is one of the kernel's own command-line tools that dumps a
// whole ruleset and loads such a dump in one shot: what `kdive bench
// sync` measures the proxy against (the floor).
type RulesetTool struct {
	// Name names the tool in reports ("nft -f", "iptables-legacy-restore").
	Name string
	// Save prints the namespace's ruleset; Restore reads one on stdin.
	Save, Restore []string
}

// The ruleset tools of each proxy mode's kernel state.
var (
	ToolNft     = RulesetTool{Name: "nft -f", Save: []string{"nft", "list", "ruleset"}, Restore: []string{"nft", "-f", "-"}}
	ToolIPSet   = RulesetTool{Name: "ipset restore", Save: []string{"ipset", "save"}, Restore: []string{"ipset", "restore"}}
	ToolIPVSAdm = RulesetTool{Name: "ipvsadm -R", Save: []string{"ipvsadm", "-S", "-n"}, Restore: []string{"ipvsadm", "-R"}}
	toolIPBatch = []string{"ip", "-batch", "-"}
)

// Installed reports whether both of the tool's programs are on PATH; the
// error names the one missing.
func (t RulesetTool) Installed() error {
	for _, argv := range [][]string{t.Save, t.Restore} {
		if _, err := exec.LookPath(argv[0]); err != nil {
			return fmt.Errorf("%s: %w", argv[0], err)
		}
	}
	return nil
}

// SaveRuleset runs the tool's dump inside the namespace and returns it.
func (n *NetNS) SaveRuleset(ctx context.Context, t RulesetTool) (string, error) {
	return n.Run(ctx, "", t.Save[0], t.Save[1:]...)
}

// RestoreRuleset loads a dump of SaveRuleset into the namespace in one
// run of the tool.
func (n *NetNS) RestoreRuleset(ctx context.Context, t RulesetTool, dump string) error {
	if strings.TrimSpace(dump) == "" {
		return nil
	}
	_, err := n.Run(ctx, dump, t.Restore[0], t.Restore[1:]...)
	return err
}

// IPBatch runs iproute2 commands (one per line, without the leading
// "ip") inside the namespace in one `ip -batch -`.
func (n *NetNS) IPBatch(ctx context.Context, commands string) error {
	_, err := n.Run(ctx, commands, toolIPBatch[0], toolIPBatch[1:]...)
	return err
}
