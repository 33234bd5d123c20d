package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/kernel/ktest"
)

// datapathBinary is the binary of `make build`: in KDIVE_TEST_BINDIR when
// set (it must be there), else the repository's bin/.
func datapathBinary(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("KDIVE_TEST_BINDIR"); dir != "" {
		bin := filepath.Join(dir, "kdive")
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("KDIVE_TEST_BINDIR=%s: %v", dir, err)
		}
		return bin
	}
	bin, err := filepath.Abs("../../bin/kdive")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("needs the kdive binary (`make build`, or KDIVE_TEST_BINDIR): %v", err)
	}
	return bin
}

// ownNS matches the names bench datapath and encap give their namespaces.
var ownNS = regexp.MustCompile(`^` + NSPrefix + `[0-9a-f]{8}-(node|client|server)$`)

// TestDatapathCLIJSON runs `kdive bench datapath -o json --svg` as a user
// would and checks its output and that it left no namespace.
func TestDatapathCLIJSON(t *testing.T) {
	ktest.RequireFeature(t, kernel.FeatureNFTables)
	bin := datapathBinary(t)
	before, err := kernel.ListNetNS(NSPrefix)
	if err != nil {
		t.Fatal(err)
	}
	svg := filepath.Join(t.TempDir(), "datapath.svg")
	cmd := exec.CommandContext(t.Context(), bin, "bench", "datapath", "--mode", "nftables", "--services", "5,20",
		"--samples", "20", "--duration", "200ms", "-o", "json", "--svg", svg)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kdive bench datapath: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want one JSON object per service count, got:\n%s", stdout.String())
	}
	for i, line := range lines {
		var r DatapathRun
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if r.Mode != "nftables" || r.Services != []int{5, 20}[i] || r.Samples != 20 || !(r.P50Seconds > 0) ||
			!(r.ThroughputBitsPerSecond > 0) || !(r.DirectBitsPerSecond > 0) || !(r.ThroughputRatio > 0) || r.ServedViaClusterIP < 20 {
			t.Errorf("line %d: %+v", i, r)
		}
	}
	if b, err := os.ReadFile(svg); err != nil || !bytes.Contains(b, []byte("<svg")) || !bytes.Contains(b, []byte("nftables")) {
		t.Errorf("--svg %s: %v\n%s", svg, err, b)
	}
	after, err := kernel.ListNetNS(NSPrefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range after {
		if ownNS.MatchString(name) && !slices.Contains(before, name) {
			t.Errorf("namespace %s was left behind", name)
		}
	}
}
