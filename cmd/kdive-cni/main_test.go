package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kdive/kdive/internal/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// TestVersionThroughLibcni builds the plugin and asks it for its versions
// the way a container runtime does, through libcni and CNI_PATH.
func TestVersionThroughLibcni(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink(testbin.Path(t, testbin.KdiveCNI), filepath.Join(dir, "kdive")); err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfig([]string{dir}, nil)
	info, err := cni.GetVersionInfo(context.Background(), "kdive")
	if err != nil {
		t.Fatal(err)
	}
	got := info.SupportedVersions()
	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		if !slices.Contains(got, v) {
			t.Errorf("supported versions %v lack %s", got, v)
		}
	}
	// An incomplete config gets a CNI error naming what is missing, before
	// the plugin looks at the netns.
	conf, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.1.0","name":"kdive","plugins":[{"type":"kdive","mode":"routed","mtu":1450}]}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cni.AddNetworkList(context.Background(), conf, &libcni.RuntimeConf{
		ContainerID: "c1", NetNS: "/proc/self/ns/net", IfName: "eth0",
	})
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, "podCIDR: required") {
		t.Fatalf("ADD without podCIDR: %v; want CNI error %d naming podCIDR", err, types.ErrInvalidNetworkConfig)
	}
	_ = os.Remove(filepath.Join(dir, "kdive"))
}
