package nft

import (
	"testing"
	"time"
)

var testTable = Table{Family: IPv4, Name: "kdive-t"}

// example builds one of every kind of object, labelled.
func example() *Transaction {
	tx := NewTransaction(testTable)
	tx.Add(&Table{Comment: "a test"})
	tx.Add(&Chain{Name: "pre", Type: "nat", Hook: "prerouting", Priority: "dstnat"})
	tx.Add(&Chain{Name: "svc"})
	tx.Add(&Set{Name: "clients", Type: "ipv4_addr", Flags: []string{"dynamic", "timeout"}, Timeout: 3 * time.Hour})
	tx.Add(&Set{Name: "nets", Type: "ipv4_addr", Flags: []string{"interval"}})
	tx.Add(&Map{Name: "vips", Type: "ipv4_addr . inet_proto . inet_service : verdict"})
	tx.Add(&Counter{Name: "hits"})
	tx.Label("ns/a:http")
	tx.Add(&Rule{Chain: "svc", Rule: "counter accept", Comment: "ns/a"})
	tx.Add(&Element{Map: "vips", Key: []string{"10.96.0.1", "tcp", "80"}, Value: []string{"goto svc"}, Comment: "ns/a:http"})
	tx.Add(&Element{Map: "vips", Key: []string{"10.96.0.1", "udp", "53"}, Value: []string{"goto svc"}})
	tx.Label("")
	tx.Add(&Element{Set: "nets", Key: []string{"10.0.0.0/8"}})
	tx.Add(&Rule{Chain: "pre", Rule: "ip daddr . meta l4proto . th dport vmap @vips"})
	return tx
}

func TestTransactionScript(t *testing.T) {
	want := `add table ip kdive-t { comment "a test"; }
add chain ip kdive-t pre { type nat hook prerouting priority dstnat; policy accept; }
add chain ip kdive-t svc
add set ip kdive-t clients { type ipv4_addr; flags dynamic,timeout; timeout 10800s; }
add set ip kdive-t nets { type ipv4_addr; flags interval; }
add map ip kdive-t vips { type ipv4_addr . inet_proto . inet_service : verdict; }
add counter ip kdive-t hits
add rule ip kdive-t svc counter accept comment "ns/a"
add element ip kdive-t vips {
	10.96.0.1 . tcp . 80 comment "ns/a:http" : goto svc,
	10.96.0.1 . udp . 53 : goto svc,
}
add element ip kdive-t nets { 10.0.0.0/8 }
add rule ip kdive-t pre ip daddr . meta l4proto . th dport vmap @vips
`
	if got := example().String(); got != want {
		t.Errorf("script:\n%s\nwant:\n%s", got, want)
	}
	// The session form: one command per operation.
	cmds := example().commands()
	if len(cmds) != 12 || cmds[8] != `add element ip kdive-t vips { 10.96.0.1 . tcp . 80 comment "ns/a:http" : goto svc }` {
		t.Errorf("commands: %q", cmds)
	}
}

func TestTransactionLabels(t *testing.T) {
	tx := example()
	_, lines := tx.script(true)
	// Lines 9-12 are the vips block: its header, two elements and "}".
	for line, want := range map[int]string{8: "ns/a:http", 9: "ns/a:http", 10: "ns/a:http", 11: "ns/a:http", 13: "", 14: ""} {
		if got := tx.labelOf(lines[line-1]); got != want {
			t.Errorf("line %d: label %q, want %q", line, got, want)
		}
	}
	if got := tx.labelsOf([]int{0, 8, 9, 11}); len(got) != 1 || got[0] != "ns/a:http" {
		t.Errorf("labelsOf = %q", got)
	}
	// Deletions name keys only.
	d := NewTransaction(testTable)
	d.Delete(&Element{Map: "vips", Key: []string{"10.96.0.1", "tcp", "80"}, Value: []string{"goto svc"}})
	d.Delete(&Rule{Chain: "svc", Handle: 4})
	d.Flush(&Chain{Name: "svc"})
	want := "delete element ip kdive-t vips { 10.96.0.1 . tcp . 80 }\ndelete rule ip kdive-t svc handle 4\nflush chain ip kdive-t svc\n"
	if got := d.String(); got != want {
		t.Errorf("script:\n%s\nwant:\n%s", got, want)
	}
}
