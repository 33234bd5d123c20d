package agent

import (
	"strings"
	"testing"
	"time"
)

func TestConfigurationParseAndValidate(t *testing.T) {
	c, err := ParseConfiguration([]byte(`
apiVersion: kdive.dev/v1alpha1
kind: AgentConfiguration
nodeName: node-1
clientConnection: {labStore: /run/kdive/labs/x/store}
podNetwork: {interface: bridge, encap: ipip, encapPolicy: always}
cni: {confDir: /tmp/net.d}
syncPeriod: 10s
`))
	if err != nil {
		t.Fatal(err)
	}
	c.Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.SyncPeriod.Duration != 10*time.Second || c.MinSyncPeriod.Duration != DefaultMinSyncPeriod ||
		c.CNI.DataDir != DefaultDataDir || c.CNI.ConfDir != "/tmp/net.d" || c.PodNetwork.Encap != "ipip" {
		t.Errorf("configuration = %+v", c)
	}
}

func TestConfigurationErrorsNameTheField(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"podNetwork: {encap: geneve}", `podNetwork.encap: unsupported value "geneve"`},
		{"podNetwork: {interface: flat}", `podNetwork.interface: unsupported value "flat"`},
		{"podNetwork: {encapPolicy: sometimes}", `podNetwork.encapPolicy`},
		{"mtu: 100", "mtu: 100 is outside 576-9000"},
		{"syncPeriod: 10ms", "syncPeriod: 10ms is shorter than 1s"},
		{"minSyncPeriod: 1m", "minSyncPeriod"},
		{"clientConnection: {kubeconfig: a, labStore: b}", "clientConnection: kubeconfig and labStore are exclusive"},
		{"clientConnection: {apiServer: 172.20.1.5:6443}", `clientConnection.apiServer: "172.20.1.5:6443" is not https://HOST[:PORT]`},
		{"clientConnection: {apiServer: http://a:6443}", `clientConnection.apiServer: "http://a:6443" is not https://HOST[:PORT]`},
		{"clientConnection: {apiServer: https://a:6443, labStore: b}", "clientConnection.apiServer: does not apply with labStore"},
		{"kind: KubeProxyConfiguration", "kind: must be AgentConfiguration"},
		{"podNetwrok: {encap: vxlan}", `unknown field "podNetwrok"`},
		{"cni: {confdir: /x}", `unknown field "cni.confdir"`},
		{"syncPeriod: soon", "syncPeriod"},
		{"proxy: {conntrack: {tcpCloseWaitTimeout: -1s}}", "proxy.conntrack.tcpCloseWaitTimeout: -1s must be whole seconds, 0 or more"},
		{"proxy: {conntrack: {tcpEstablishedTimeout: 1500ms}}", "proxy.conntrack.tcpEstablishedTimeout: 1.5s must be whole seconds"},
	} {
		cfg, err := ParseConfiguration([]byte("nodeName: n1\n" + c.yaml))
		if err == nil {
			cfg.Default()
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to contain %q", c.yaml, err, c.want)
		}
	}
}

// TestConfigurationProxyOnly: podNetwork.interface none is the service
// proxy alone; with no proxy either the agent would do nothing.
func TestConfigurationProxyOnly(t *testing.T) {
	cfg, err := ParseConfiguration([]byte("nodeName: n1\npodNetwork: {interface: none}\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Default()
	if err := cfg.Validate(); err != nil {
		t.Errorf("interface none with the default proxy: %v", err)
	}
	cfg.Proxy.Mode = "none"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "podNetwork.interface: none with proxy.mode none") {
		t.Errorf("interface none and proxy none: error %v", err)
	}
}
