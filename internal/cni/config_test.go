package cni_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kdive/kdive/internal/cni"
	"github.com/kdive/kdive/internal/model"
)

const routedConf = `{"cniVersion":"1.1.0","name":"kdive","type":"kdive","mode":"routed","podCIDR":"10.0.1.0/24","mtu":1450}`

// withKey returns routedConf with one more key (or a key replaced).
func withKey(t testing.TB, key string, value any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(routedConf), &m); err != nil {
		t.Fatal(err)
	}
	if value == nil {
		delete(m, key)
	} else {
		m[key] = value
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := cni.ParseConfig([]byte(routedConf))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != model.InterfaceRouted || c.Block != netip.MustParsePrefix("10.0.1.0/24") || c.MTU != 1450 ||
		c.DataDir != cni.DefaultDataDir || c.HostVethPrefix != "cali" || c.Bridge != "" {
		t.Errorf("routed config parsed as %+v", c)
	}
	b := withKey(t, "mode", "bridge")
	c, err = cni.ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != "kube-bridge" || c.HostVethPrefix != "" {
		t.Errorf("bridge config parsed as %+v", c)
	}
	// What runtimes add: prevResult, runtimeConfig, args, GC lists.
	full := `{"cniVersion":"1.1.0","name":"kdive","type":"kdive","mode":"routed","podCIDR":"10.0.1.0/24","mtu":1450,
	  "prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.1.2/32"}]},"runtimeConfig":{"portMappings":[]},
	  "args":{"cni":{}},"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],
	  "cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}],"capabilities":{"portMappings":true},"dns":{}}`
	c, err = cni.ParseConfig([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ValidAttachments) != 1 || c.RawPrevResult == nil {
		t.Errorf("runtime keys lost: %+v", c)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		conf []byte
		code uint
		msg  string
	}{
		{"typo", withKey(t, "podCDIR", "10.0.1.0/24"), types.ErrInvalidNetworkConfig, `unknown key "podCDIR" (did you mean "podCIDR"?)`},
		{"case", withKey(t, "MTU", 1400), types.ErrInvalidNetworkConfig, `unknown key "MTU" (did you mean "mtu"?)`},
		{"far off", withKey(t, "wibble", 1), types.ErrInvalidNetworkConfig, `unknown key "wibble"`},
		{"no podCIDR", withKey(t, "podCIDR", nil), types.ErrInvalidNetworkConfig, "podCIDR: required"},
		{"bad podCIDR", withKey(t, "podCIDR", "10.0.1.0"), types.ErrInvalidNetworkConfig, `podCIDR: "10.0.1.0" is not a CIDR block`},
		{"host bits", withKey(t, "podCIDR", "10.0.1.7/24"), types.ErrInvalidNetworkConfig, "did you mean 10.0.1.0/24"},
		{"ipv6", withKey(t, "podCIDR", "fd00::/120"), types.ErrInvalidNetworkConfig, "podCIDR: pod block fd00::/120: only IPv4"},
		{"mtu low", withKey(t, "mtu", 100), types.ErrInvalidNetworkConfig, "mtu: 100 is out of range 576..9000"},
		{"mtu high", withKey(t, "mtu", 9001), types.ErrInvalidNetworkConfig, "mtu: 9001 is out of range"},
		{"mtu missing", withKey(t, "mtu", nil), types.ErrInvalidNetworkConfig, "mtu: required"},
		{"mtu string", withKey(t, "mtu", "1450"), types.ErrDecodingFailure, "mtu"},
		{"mode", withKey(t, "mode", "overlay"), types.ErrInvalidNetworkConfig, `mode: unknown mode "overlay"`},
		{"mode missing", withKey(t, "mode", nil), types.ErrInvalidNetworkConfig, "mode: required"},
		{"bridge in routed", withKey(t, "bridge", "br0"), types.ErrInvalidNetworkConfig, "bridge: only used in bridge mode"},
		{"prefix", withKey(t, "hostVethPrefix", "calico-"), types.ErrInvalidNetworkConfig, "hostVethPrefix:"},
		{"dataDir", withKey(t, "dataDir", "var/lib"), types.ErrInvalidNetworkConfig, `dataDir: "var/lib" is not an absolute path`},
		{"ipam", withKey(t, "ipam", map[string]any{"type": "host-local"}), types.ErrInvalidNetworkConfig, "ipam: kdive assigns pod addresses itself"},
		{"nested unknown", withKey(t, "ipam", map[string]any{"tpye": "x"}), types.ErrInvalidNetworkConfig, "ipam.tpye"},
		{"duplicate", []byte(strings.Replace(routedConf, `"mtu":1450`, `"mtu":1450,"mtu":1400`, 1)), types.ErrInvalidNetworkConfig, `duplicate field "mtu"`},
		{"not json", []byte(`mode=routed`), types.ErrDecodingFailure, "not a JSON object"},
		{"null", []byte(`null`), types.ErrDecodingFailure, "not a JSON object"},
		{"array", []byte(`[]`), types.ErrDecodingFailure, "not a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cni.ParseConfig(tc.conf)
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("ParseConfig(%s) = %v, want a *types.Error", tc.conf, err)
			}
			if te.Code != tc.code || !strings.Contains(te.Msg, tc.msg) {
				t.Errorf("ParseConfig(%s) = code %d %q; want code %d containing %q", tc.conf, te.Code, te.Msg, tc.code, tc.msg)
			}
		})
	}
}

func TestNewConfList(t *testing.T) {
	got, err := cni.NewConfList(cni.ConfListOptions{
		Mode: model.InterfaceRouted, PodCIDR: netip.MustParsePrefix("10.0.1.0/24"), MTU: 1450,
		DataDir: "/run/kdive/labs/demo/nodes/n1/ipam",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "cniVersion": "1.1.0",
  "name": "kdive",
  "plugins": [
    {
      "type": "kdive",
      "capabilities": {
        "portMappings": true
      },
      "mode": "routed",
      "podCIDR": "10.0.1.0/24",
      "mtu": 1450,
      "dataDir": "/run/kdive/labs/demo/nodes/n1/ipam",
      "hostVethPrefix": "cali"
    }
  ]
}
`
	if string(got) != want {
		t.Errorf("NewConfList =\n%s\nwant\n%s", got, want)
	}
	list, err := libcni.ConfListFromBytes(got)
	if err != nil {
		t.Fatal(err)
	}
	if list.Name != "kdive" || len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "kdive" ||
		!list.Plugins[0].Network.Capabilities["portMappings"] {
		t.Errorf("libcni reads the conflist as %+v", list)
	}

	got, err = cni.NewConfList(cni.ConfListOptions{Mode: model.InterfaceBridge, PodCIDR: netip.MustParsePrefix("10.0.2.0/24"), MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"bridge": "kube-bridge"`, `"dataDir": "/var/lib/cni/kdive"`} {
		if !bytes.Contains(got, []byte(s)) {
			t.Errorf("bridge conflist lacks %s:\n%s", s, got)
		}
	}

	for _, tc := range []struct {
		o   cni.ConfListOptions
		msg string
	}{
		{cni.ConfListOptions{Mode: "routed", MTU: 1450}, "podCIDR: required"},
		{cni.ConfListOptions{Mode: "routed", PodCIDR: netip.MustParsePrefix("10.0.1.0/24")}, "mtu: required"},
		{cni.ConfListOptions{Mode: "tunnel", PodCIDR: netip.MustParsePrefix("10.0.1.0/24"), MTU: 1450}, "mode: unknown"},
		{cni.ConfListOptions{Mode: "bridge", PodCIDR: netip.MustParsePrefix("10.0.1.0/24"), MTU: 1450, HostVethPrefix: "cali"}, "hostVethPrefix: only used in routed mode"},
	} {
		if _, err := cni.NewConfList(tc.o); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("NewConfList(%+v) = %v, want error containing %q", tc.o, err, tc.msg)
		}
	}
}

func TestWriteConfList(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d")
	data := []byte(`{"cniVersion":"1.1.0"}` + "\n")
	if err := cni.WriteConfList(dir, data); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "10-kdive.conflist")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("conflist mode %v, want 0644", st.Mode().Perm())
	}
	// The same content again leaves the file alone (no needless events
	// for runtimes watching the directory).
	if err := cni.WriteConfList(dir, data); err != nil {
		t.Fatal(err)
	}
	if st2, _ := os.Stat(path); !os.SameFile(st, st2) {
		t.Error("rewriting identical content replaced the file")
	}
	if err := cni.WriteConfList(dir, []byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after writes, want just the conflist", len(entries))
	}
	if b, _ := os.ReadFile(path); string(b) != "{}\n" {
		t.Errorf("conflist holds %q", b)
	}
}

// FuzzParseConfig: the parser never panics, and what it accepts it writes
// back (NetConf.MarshalJSON) in a form it accepts again, unchanged.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(routedConf))
	f.Add(withKey(f, "mode", "bridge"))
	f.Add(withKey(f, "podCDIR", "10.0.1.0/24"))
	f.Add(withKey(f, "prevResult", map[string]any{"cniVersion": "1.1.0", "ips": []any{map[string]any{"address": "10.0.1.2/32", "interface": 1}}}))
	f.Add(withKey(f, "cni.dev/valid-attachments", []any{map[string]any{"containerID": "c1", "ifname": "eth0"}}))
	f.Add(withKey(f, "dns", map[string]any{"nameservers": []any{}}))
	f.Add([]byte(`{"name":"kdive","mode":"bridge","podCIDR":"10.9.0.0/16","mtu":9000,"bridge":"br-x","dataDir":"/a/../b/"}`))
	f.Add([]byte(`{"mtu":1e3}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := cni.ParseConfig(data)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("error %v is not a *types.Error", err)
			}
			return
		}
		once, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("marshal accepted config: %v", err)
		}
		c2, err := cni.ParseConfig(once)
		if err != nil {
			t.Fatalf("accepted %s but not its re-encoding %s: %v", data, once, err)
		}
		twice, err := json.Marshal(c2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(once, twice) || c2.Block != c.Block {
			t.Fatalf("round trip changed the config:\n%s\n%s", once, twice)
		}
	})
}
