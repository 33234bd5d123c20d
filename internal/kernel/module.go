package kernel

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// LoadModule loads a kernel module with modprobe (a no-op when it is
// loaded or built in). A module's per-namespace sysctls, such as
// br_netfilter's net.bridge.*, exist only once it is loaded, and then
// appear with their defaults in every namespace.
func LoadModule(ctx context.Context, name string) error {
	out, err := exec.CommandContext(ctx, "modprobe", name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("modprobe %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
