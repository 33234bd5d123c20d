package kernel_test

import (
	"context"
	"os/exec"
	"testing"

	"github.com/kdive/kdive/internal/kernel/ktest"
)

// TestLegacyIPTablesInfo: the entry count moves with the table's rules.
func TestLegacyIPTablesInfo(t *testing.T) {
	ktest.RequireRoot(t)
	if _, err := exec.LookPath("iptables-legacy-restore"); err != nil {
		t.Skipf("iptables-legacy-restore not installed: %v", err)
	}
	ns := ktest.NewNetNS(t)
	restore := func(in string) {
		t.Helper()
		if _, err := ns.Run(context.Background(), in, "iptables-legacy-restore", "-w", "--noflush"); err != nil {
			t.Fatal(err)
		}
	}
	restore("*nat\n:KDIVE-TEST - [0:0]\nCOMMIT\n")
	before, err := ns.LegacyIPTablesInfo("nat")
	if err != nil {
		t.Fatal(err)
	}
	restore("*nat\n-A KDIVE-TEST -s 192.0.2.1 -j RETURN\nCOMMIT\n")
	after, err := ns.LegacyIPTablesInfo("nat")
	if err != nil {
		t.Fatal(err)
	}
	if after.Entries != before.Entries+1 || after.Size <= before.Size {
		t.Errorf("before %+v, after adding a rule %+v", before, after)
	}
	if _, err := ns.LegacyIPTablesInfo("no-such-table"); err == nil {
		t.Error("no error for a table that does not exist")
	}
}
