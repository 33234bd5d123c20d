package cni

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	sigsjson "sigs.k8s.io/json"

	"github.com/kdive/kdive/internal/cni/ipam"
)

// Fuzz tests for what a runtime hands the plugin besides the network
// config (FuzzParseConfig, in config_test.go): the portMappings capability,
// CNI_CONTAINERID and CNI_IFNAME, and nft's JSON listing of the hostPort
// table the plugin reads back. Hostile values must be refused with an
// error naming the field, never panic, never yield a name that escapes a
// directory or a mapping the kernel would take otherwise.

// FuzzPortMappings: runtimeConfig.portMappings as any JSON value, decoded
// both as ParseConfig decodes it (int64 numbers) and as encoding/json does
// (float64). Accepted mappings are in range, unique, IPv4, and
// print back (JSON) into mappings parsed the same.
func FuzzPortMappings(f *testing.F) {
	for _, s := range []string{
		`[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]`,
		`[{"hostPort": 53, "containerPort": 53, "protocol": "UDP"}, {"hostPort": 53, "containerPort": 53, "protocol": "tcp", "hostIP": "0.0.0.0"}]`,
		`[{"hostPort": 80, "containerPort": 80, "hostIP": "::1"}, {"hostPort": 80, "containerPort": 80, "hostIP": "::ffff:192.0.2.1"}]`,
		`[{"hostPort": 80, "containerPort": 80, "hostIP": "127.0.0.1"}]`,
		`[{"hostPort": 70000, "containerPort": 80}]`,
		`[{"hostPort": 80.5, "containerPort": "80"}]`,
		`[{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81, "protocol": "TCP"}]`,
		`[{"hostPort": 80, "containerPort": 80, "hostIP": "fe80::1%eth0"}]`,
		`{"hostPort": 80}`, `[1]`, `null`, `[{"hostPort": 1e3, "containerPort": 1}]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var viaStd, viaSigs any
		if json.Unmarshal(data, &viaStd) != nil {
			return
		}
		if err := sigsjson.UnmarshalCaseSensitivePreserveInts(data, &viaSigs); err != nil {
			return
		}
		for _, raw := range []any{viaStd, viaSigs} {
			ms, err := parsePortMappings(raw)
			if err != nil {
				if !strings.HasPrefix(err.Error(), portMappingsKey) {
					t.Fatalf("error %q does not name the field", err)
				}
				continue
			}
			seen := map[PortMapping]bool{}
			for _, m := range ms {
				key := PortMapping{HostIP: m.HostIP, Protocol: m.Protocol, HostPort: m.HostPort}
				switch {
				case m.HostPort == 0 || m.ContainerPort == 0:
					t.Fatalf("accepted port 0: %+v", m)
				case m.Protocol != "tcp" && m.Protocol != "udp" && m.Protocol != "sctp":
					t.Fatalf("accepted protocol %q", m.Protocol)
				case m.HostIP.IsValid() && (!m.HostIP.Is4() || m.HostIP.IsMulticast() || m.HostIP.IsUnspecified()):
					t.Fatalf("accepted host IP %s", m.HostIP)
				case seen[key]:
					t.Fatalf("accepted %v twice", key)
				}
				seen[key] = true
			}
			if ms == nil {
				ms = []PortMapping{} // all skipped (IPv6)
			}
			b, err := json.Marshal(ms)
			if err != nil {
				t.Fatal(err)
			}
			var back any
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			ms2, err := parsePortMappings(back)
			if ms2 == nil {
				ms2 = []PortMapping{}
			}
			if err != nil || !reflect.DeepEqual(ms, ms2) {
				t.Fatalf("printed mappings %s parse as %+v, %v; want %+v", b, ms2, err, ms)
			}
		}
		// The whole way, as ADD gets them.
		conf := `{"cniVersion":"1.1.0","name":"kdive","type":"kdive","mode":"routed","podCIDR":"10.0.1.0/24","mtu":1450,"runtimeConfig":{"portMappings":` + string(data) + `}}`
		c, err := ParseConfig([]byte(conf))
		if err != nil {
			return
		}
		if _, err := c.PortMappings(); err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, portMappingsKey) {
				t.Fatalf("error %v is not an invalid-config error naming %s", err, portMappingsKey)
			}
		}
	})
}

// FuzzAttachmentArgs: CNI_CONTAINERID and CNI_IFNAME. An accepted pair
// makes names that stay inside their directories (no '/', not "." or
// ".."), fit the kernel (an interface name, a host veth of at most 15
// bytes), and read back from the veth's alias as the same pair.
func FuzzAttachmentArgs(f *testing.F) {
	for _, s := range [][2]string{
		{"c1", "eth0"}, {"../../etc", "eth0"}, {"c1", "../x"}, {"c1", "a-very-long-interface"}, {"", ""},
		{"c1/../../x", "eth0"}, {".", "."}, {"c1", "eth 0"}, {"c1", "eth0\n"}, {"c1", "eth:0"}, {strings.Repeat("a", 201), "eth0"},
		{"-c1", "eth0"}, {"c1", "ëth0"}, {"c1", "\x00"},
	} {
		f.Add(s[0], s[1])
	}
	routed := &NetConf{Mode: "routed", HostVethPrefix: DefaultHostVethPrefix}
	bridged := &NetConf{Mode: "bridge"}
	f.Fuzz(func(t *testing.T, id, ifname string) {
		a, err := attachmentOf(&skel.CmdArgs{ContainerID: id, IfName: ifname})
		if err != nil {
			var te *types.Error
			if !errors.As(cniError("ADD", err), &te) || te.Code != types.ErrInvalidEnvironmentVariables ||
				(!strings.Contains(te.Msg, "CNI_CONTAINERID") && !strings.Contains(te.Msg, "CNI_IFNAME")) {
				t.Fatalf("error %v does not name CNI_CONTAINERID or CNI_IFNAME", err)
			}
			return
		}
		for _, s := range []string{a.ContainerID, a.IfName} {
			if s == "." || s == ".." || strings.ContainsAny(s, "/\x00\n") {
				t.Fatalf("accepted %q, which escapes a directory or a line", s)
			}
		}
		if len(a.IfName) > 15 {
			t.Fatalf("accepted interface name %q (%d bytes)", a.IfName, len(a.IfName))
		}
		if err := a.Validate(); err != nil {
			t.Fatalf("accepted %v, which the IPAM store refuses: %v", a, err)
		}
		for _, c := range []*NetConf{routed, bridged} {
			if n := hostVethName(c, a); len(n) > 15 || strings.ContainsAny(n, "/: ") {
				t.Fatalf("host veth name %q", n)
			}
		}
		if back, ok := aliasAttachment(vethAlias(a)); !ok || back != (ipam.Attachment{ContainerID: id, IfName: ifname}) {
			t.Fatalf("alias %q reads back as %v, %v", vethAlias(a), back, ok)
		}
	})
}
