package nftables

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kdive/kdive/internal/kernel/nft"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
	"github.com/kdive/kdive/internal/proxy/proxytest"
)

func fakeProxier() (*Proxier, *fakeNft) {
	f := newFakeNft()
	p := New(Options{NFT: f.Fake})
	p.run = f.run
	return p, f
}

// state is a desired state being edited by a test: the node, config and
// ports, resolved into a Desired on demand.
type state struct {
	d     *proxy.Desired
	ports map[model.ServicePortName]model.ServicePort
}

func stateOf(d *proxy.Desired) *state {
	s := &state{d: d, ports: map[model.ServicePortName]model.ServicePort{}}
	for _, p := range d.Services {
		s.ports[p.Name] = p.ServicePort
	}
	return s
}

// desired resolves the ports; changed names what changed (nil: all).
func (s *state) desired(changed ...model.ServicePortName) *proxy.Desired {
	d := proxy.NewDesired(s.d.Config, s.d.Node)
	for _, sp := range s.ports {
		d.Services = append(d.Services, proxy.Resolve(sp, d.Node))
	}
	slices.SortFunc(d.Services, func(a, b *proxy.Port) int { return strings.Compare(a.Name.String(), b.Name.String()) })
	if changed != nil {
		d.Changed = map[model.ServicePortName]bool{}
		for _, n := range changed {
			d.Changed[n] = true
		}
	}
	return d
}

func (s *state) edit(t *testing.T, name string, fn func(*model.ServicePort)) model.ServicePortName {
	t.Helper()
	for n, sp := range s.ports {
		if n.String() == name {
			fn(&sp)
			s.ports[n] = sp
			return n
		}
	}
	t.Fatalf("no port %s", name)
	return model.ServicePortName{}
}

func mustSync(t *testing.T, p *Proxier, d *proxy.Desired) {
	t.Helper()
	if err := p.Sync(context.Background(), d); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

// checkTable compares the (fake) kernel's table with a fresh load of
// Render(d), and the proxier's memory with Render(d).
func checkTable(t *testing.T, p *Proxier, f *fakeNft, d *proxy.Desired) {
	t.Helper()
	want := Render(d)
	if got, w := f.Dump(), fresh(want); got != w {
		t.Fatalf("table after incremental syncs differs from a fresh load:\n%s", lineDiff(got, w))
	}
	if p.cur == nil || p.cur.String() != want.String() {
		t.Fatalf("proxier's memory differs from Render")
	}
}

func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var out []string
	for _, l := range g {
		if !slices.Contains(w, l) {
			out = append(out, "+ "+l)
		}
	}
	for _, l := range w {
		if !slices.Contains(g, l) {
			out = append(out, "- "+l)
		}
	}
	return strings.Join(out, "\n")
}

func TestSyncReplacesFirstThenSendsNothing(t *testing.T) {
	p, f := fakeProxier()
	d := proxytest.Fixture()
	mustSync(t, p, d)
	if len(f.scripts) != 1 || !strings.HasPrefix(f.scripts[0], "add table ip kdive-proxy\ndelete table ip kdive-proxy\nadd table ip kdive-proxy {") {
		t.Fatalf("first sync should replace the table in one script; got %d scripts:\n%s", len(f.scripts), strings.Join(f.scripts, "\n---\n"))
	}
	checkTable(t, p, f, d)
	mustSync(t, p, d) // Changed nil: full diff, nothing to do
	d.Changed = map[model.ServicePortName]bool{}
	mustSync(t, p, d)
	d.Changed = map[model.ServicePortName]bool{d.Services[0].Name: true}
	mustSync(t, p, d)
	if len(f.scripts) != 1 {
		t.Errorf("syncing the same state again sent %d more scripts:\n%s", len(f.scripts)-1, strings.Join(f.scripts[1:], "\n---\n"))
	}
}

func TestSyncIncremental(t *testing.T) {
	ip := netip.MustParseAddr
	steps := []struct {
		name string
		edit func(t *testing.T, s *state) []model.ServicePortName // nil: full
		// maxLines bounds the script: only what changed is sent.
		maxLines int
	}{
		{"replace one endpoint", func(t *testing.T, s *state) []model.ServicePortName {
			return []model.ServicePortName{s.edit(t, "default/web:http", func(sp *model.ServicePort) { sp.Endpoints[2].IP = ip("10.0.3.22") })}
		}, 6}, // its cluster IP, NodePort and external IP: one delete and add each
		{"one endpoint fewer", func(t *testing.T, s *state) []model.ServicePortName {
			return []model.ServicePortName{s.edit(t, "default/web:http", func(sp *model.ServicePort) { sp.Endpoints = sp.Endpoints[:2] })}
		}, 30},
		{"endpoint count new to the table", func(t *testing.T, s *state) []model.ServicePortName {
			return []model.ServicePortName{s.edit(t, "default/web:https", func(sp *model.ServicePort) {
				sp.Endpoints = append(sp.Endpoints, sp.Endpoints[0], sp.Endpoints[1])
				sp.Endpoints[3].IP, sp.Endpoints[4].IP = ip("10.0.1.12"), ip("10.0.2.12")
			})}
		}, 30},
		{"service gone", func(t *testing.T, s *state) []model.ServicePortName {
			n := s.edit(t, "default/empty", func(*model.ServicePort) {})
			delete(s.ports, n)
			return []model.ServicePortName{n}
		}, 10},
		{"affinity endpoint replaced", func(t *testing.T, s *state) []model.ServicePortName {
			return []model.ServicePortName{s.edit(t, "default/affinity", func(sp *model.ServicePort) { sp.Endpoints[0].IP = ip("10.0.2.77") })}
		}, 30},
		{"affinity timeout changed", func(t *testing.T, s *state) []model.ServicePortName {
			s.edit(t, "default/affinity", func(sp *model.ServicePort) { sp.AffinityTimeout = 60 })
			return []model.ServicePortName{s.edit(t, "default/affinity", func(sp *model.ServicePort) {})}
		}, 0},
		{"affinity turned off", func(t *testing.T, s *state) []model.ServicePortName {
			return []model.ServicePortName{s.edit(t, "default/affinity", func(sp *model.ServicePort) { sp.AffinityTimeout = 0 })}
		}, 40},
		{"eTP Local loses its local endpoint", func(t *testing.T, s *state) []model.ServicePortName {
			return []model.ServicePortName{s.edit(t, "default/local", func(sp *model.ServicePort) { sp.Endpoints = sp.Endpoints[1:] })}
		}, 40},
		{"source ranges gone", func(t *testing.T, s *state) []model.ServicePortName {
			return []model.ServicePortName{s.edit(t, "default/local", func(sp *model.ServicePort) { sp.LoadBalancerSourceRanges = nil })}
		}, 10},
		{"node port addresses change (full)", func(t *testing.T, s *state) []model.ServicePortName {
			s.d.Config.LocalhostNodePorts = true
			return []model.ServicePortName{}
		}, 60},
		{"unannounced change, full resync", func(t *testing.T, s *state) []model.ServicePortName {
			s.edit(t, "kube-system/kube-dns:dns", func(sp *model.ServicePort) { sp.Endpoints[0].Ready = false; sp.Endpoints[0].Serving = false })
			return nil
		}, 30},
	}
	p, f := fakeProxier()
	s := stateOf(proxytest.Fixture())
	mustSync(t, p, s.desired())
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			before := len(f.scripts)
			changed := st.edit(t, s)
			d := s.desired(changed...)
			if changed == nil {
				d.Changed = nil
			}
			mustSync(t, p, d)
			checkTable(t, p, f, d)
			if len(f.scripts) != before+1 {
				t.Fatalf("sent %d scripts, want 1", len(f.scripts)-before)
			}
			script := f.scripts[len(f.scripts)-1]
			replaced := strings.HasPrefix(script, "add table")
			if st.maxLines == 0 && !replaced {
				t.Errorf("a changed set declaration should replace the table:\n%s", script)
			}
			if n := f.ops[len(f.ops)-1]; st.maxLines > 0 && (replaced || n > st.maxLines) {
				t.Errorf("transaction has %d operations (replace %v), want at most %d:\n%s", n, replaced, st.maxLines, script)
			}
			mustSync(t, p, d)
			if len(f.scripts) != before+1 {
				t.Errorf("the same state again sent another script:\n%s", f.scripts[len(f.scripts)-1])
			}
		})
	}
}

// TestSyncRandomChanges edits random ports of a mixed state many times and
// checks after each incremental Sync that the table equals a fresh load.
func TestSyncRandomChanges(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := proxytest.Fixture()
	for _, p := range GenerateDesired(30, 3).Services {
		base.Services = append(base.Services, p)
	}
	s := stateOf(base)
	s.d.Node, s.d.Config = GenerateDesired(0, 0).Node, proxytest.Fixture().Config
	s.d.Node.Name = "node-1"
	p, f := fakeProxier()
	mustSync(t, p, s.desired())
	names := func() []model.ServicePortName {
		ns := keysOf(s.ports)
		slices.SortFunc(ns, model.ServicePortName.Compare)
		return ns
	}
	for i := range 300 {
		var changed []model.ServicePortName
		for range 1 + r.IntN(3) {
			all := names()
			n := all[r.IntN(len(all))]
			sp := s.ports[n]
			what := r.IntN(9)
			switch what {
			case 0: // replace an endpoint
				if len(sp.Endpoints) > 0 {
					e := &sp.Endpoints[r.IntN(len(sp.Endpoints))]
					e.IP = netip.AddrFrom4([4]byte{10, 0, byte(1 + r.IntN(3)), byte(r.IntN(250))})
				}
			case 1: // drop one
				if len(sp.Endpoints) > 0 {
					sp.Endpoints = slices.Delete(slices.Clone(sp.Endpoints), 0, 1)
				}
			case 2: // add one, here or elsewhere
				node := fmt.Sprintf("node-%d", 1+r.IntN(3))
				sp.Endpoints = append(slices.Clone(sp.Endpoints), model.Endpoint{IP: netip.AddrFrom4([4]byte{10, 0, 9, byte(r.IntN(250))}),
					Port: 8080, NodeName: node, Ready: true, Serving: true})
			case 3:
				sp.ExternalPolicyLocal = !sp.ExternalPolicyLocal
				sp.NodePort = 30000 + r.IntN(100)
			case 4:
				sp.InternalPolicyLocal = !sp.InternalPolicyLocal
			case 5:
				sp.AffinityTimeout = []int{0, 0, 10800}[r.IntN(3)]
			case 6:
				sp.LoadBalancerIPs = []netip.Addr{netip.AddrFrom4([4]byte{203, 0, 113, byte(r.IntN(5))})}
				sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
			case 7: // gone, or back as a copy under a new name
				delete(s.ports, n)
				if r.IntN(2) == 0 {
					sp.Name.Name += "-x"
					s.ports[sp.Name] = sp
					changed = append(changed, sp.Name)
				}
				changed = append(changed, n)
				continue
			case 8:
				if len(sp.Endpoints) > 0 {
					e := &sp.Endpoints[0]
					e.Ready, e.Terminating = !e.Ready, e.Ready
				}
			}
			s.ports[n] = sp
			changed = append(changed, n)
		}
		d := s.desired(changed...)
		if i%25 == 0 {
			d.Changed = nil
		}
		mustSync(t, p, d)
		checkTable(t, p, f, d)
		if t.Failed() {
			t.Fatalf("after step %d", i)
		}
	}
	replaced := 0
	for _, sc := range f.scripts {
		if strings.HasPrefix(sc, "add table") {
			replaced++
		}
	}
	t.Logf("%d scripts, %d replaced the table", len(f.scripts), replaced)
}

func TestSyncFailureKeepsOldRulesAndRetriesWhole(t *testing.T) {
	p, f := fakeProxier()
	s := stateOf(proxytest.Fixture())
	d := s.desired()
	mustSync(t, p, d)
	before := f.Dump()
	n := s.edit(t, "default/web:http", func(sp *model.ServicePort) { sp.Endpoints = sp.Endpoints[:1] })
	boom := errors.New("boom")
	f.fail = boom
	if err := p.Sync(context.Background(), s.desired(n)); !errors.Is(err, boom) {
		t.Fatalf("Sync = %v, want it to wrap the nft error", err)
	}
	if f.Dump() != before {
		t.Fatalf("a failed transaction changed the table")
	}
	d = s.desired(n)
	mustSync(t, p, d)
	if last := f.scripts[len(f.scripts)-1]; !strings.HasPrefix(last, "add table ip kdive-proxy\ndelete table") {
		t.Errorf("the Sync after a failure should replace the table; sent:\n%s", last)
	}
	checkTable(t, p, f, d)
}

func TestSyncErrorNamesService(t *testing.T) {
	p, f := fakeProxier()
	// Break the element of default/web:https so that nft refuses it.
	p.run = func(ctx context.Context, tx *nft.Transaction) error {
		for _, o := range tx.Objects() {
			if e, ok := o.(*nft.Element); ok && e.Comment == "default/web:https" && e.Value[0] == "goto cluster-ip-3" {
				e.Value = []string{"goto no-such-chain"}
			}
		}
		return f.run(ctx, tx)
	}
	err := p.Sync(context.Background(), proxytest.Fixture())
	if err == nil || !strings.HasPrefix(err.Error(), "sync service default/web:https: ") {
		t.Fatalf("Sync = %v, want an error naming default/web:https", err)
	}
	if f.Dump() != "<no table>" {
		t.Errorf("failed first sync left a table")
	}
}

func TestCleanup(t *testing.T) {
	p, f := fakeProxier()
	ctx := context.Background()
	if err := p.Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup without a table: %v", err)
	}
	mustSync(t, p, proxytest.Fixture())
	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if f.Dump() != "<no table>" {
		t.Errorf("table left after Cleanup:\n%s", f.Dump())
	}
	mustSync(t, p, proxytest.Fixture())
	if !strings.HasPrefix(f.scripts[len(f.scripts)-1], "add table") {
		t.Errorf("Sync after Cleanup should create the table whole")
	}
}
