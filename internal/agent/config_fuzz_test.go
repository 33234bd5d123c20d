package agent

import (
	"reflect"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// fieldError is how each of Validate's errors starts: the field's path.
var fieldError = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9]*(\.[a-zA-Z][a-zA-Z0-9]*|\[[0-9]+\])*: `)

// FuzzParseConfiguration: the agent's configuration file. Parsing never
// panics and says it is about the agent configuration; each of Validate's
// errors names its field; what parses prints back (YAML) into the same
// configuration.
func FuzzParseConfiguration(f *testing.F) {
	for _, s := range []string{
		"apiVersion: kdive.dev/v1alpha1\nkind: AgentConfiguration\nnodeName: node-1\nclientConnection: {labStore: /run/kdive/labs/x/store}\n" +
			"podNetwork: {interface: bridge, encap: ipip, encapPolicy: always}\ncni: {confDir: /tmp/net.d}\nsyncPeriod: 10s\n",
		"proxy: {mode: ipvs, ipvs: {scheduler: wrr}, clusterCIDR: 10.0.0.0/16, nodePortAddresses: [172.20.0.0/16, 'x'], localhostNodePorts: true}\n",
		"healthzBindAddress: '0'\nmetricsBindAddress: 127.0.0.1\nmtu: 100\nminSyncPeriod: 1m\n",
		`{"syncPeriod": 10, "minSyncPeriod": "-1s", "podNetwork": {"encap": "geneve"}}`,
		"podNetwrok: {encap: vxlan}\n", "syncPeriod: soon\n", "- a\n- b\n", "null", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfiguration(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "agent configuration: ") {
				t.Fatalf("error %q does not say it is about the agent configuration", err)
			}
			return
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		c2, err := ParseConfiguration(out)
		if err != nil {
			t.Fatalf("parsed, but not once printed: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("printed configuration parses differently:\n%+v\n%+v\n%s", c, c2, out)
		}
		t.Setenv("NODE_NAME", "fuzz-node")
		c.Default()
		err = c.Validate()
		if err == nil {
			return
		}
		msg, ok := strings.CutPrefix(err.Error(), "invalid agent configuration: ")
		if !ok {
			t.Fatalf("error %q does not say it is about the agent configuration", err)
		}
		for _, line := range strings.Split(msg, "\n") {
			if !fieldError.MatchString(line) {
				t.Fatalf("error %q names no field", line)
			}
		}
	})
}
