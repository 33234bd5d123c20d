package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/podnet"
)

// Cleanup removes everything kdive ever programmed on this node, for
// uninstall (`kdive agent --cleanup`): every proxy mode's rules, the pod
// network's routes, tunnels and FDB entries, the CNI plugin's hostPort
// and anti-spoofing tables, and the CNI network config.
// It needs no API server. Pods keep their interfaces until they go.
func Cleanup(ctx context.Context, cfg *Configuration, ns *kernel.NetNS) error {
	if ns == nil {
		var err error
		if ns, err = kernel.OpenNetNS("/proc/self/ns/net"); err != nil {
			return err
		}
		defer ns.Close()
	}
	var errs []error
	if err := cleanupOtherModes(ctx, "", ns); err != nil {
		errs = append(errs, err)
	}
	if err := podnet.New(podnet.Options{NetNS: ns, Network: cfg.PodNetwork}).Cleanup(ctx); err != nil {
		errs = append(errs, fmt.Errorf("clean up pod network: %w", err))
	}
	if err := cni.CleanupHostPorts(ctx, ns); err != nil {
		errs = append(errs, err)
	}
	if err := cni.CleanupAntiSpoof(ns); err != nil {
		errs = append(errs, err)
	}
	conf := filepath.Join(cfg.CNI.ConfDir, cni.ConfListFile)
	if err := os.Remove(conf); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", conf, err))
	}
	return errors.Join(errs...)
}
