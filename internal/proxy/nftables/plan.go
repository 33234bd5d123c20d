package nftables

import (
	"slices"

	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// A port's rendering depends only on the port and the globals, so when
// the tracker names the ports that changed (Desired.Changed) only those
// are taken out of the ruleset and rendered again; the difference is what
// they touched. When it does not know (Changed nil) or the globals changed,
// the whole table is rendered and compared.

// plan computes the transaction from what is programmed to d, and the
// ruleset the kernel holds once it is applied. It may update p.cur in
// place (which Sync forgets if the transaction fails).
func (p *Proxier) plan(d *proxy.Desired) (*Transaction, *Ruleset) {
	if p.cur == nil {
		rs := Render(d)
		if k := p.adopted; k != nil {
			p.adopted = nil
			if t, ok := diff(k, rs, nil); ok {
				return t, rs
			}
		}
		return &Transaction{Replace: rs}, rs
	}
	if d.Changed == nil || !globalsOf(d).equal(p.cur.glob) {
		rs := Render(d)
		if t, ok := diff(p.cur, rs, nil); ok {
			return t, rs
		}
		return &Transaction{Replace: rs}, rs
	}
	rs, rec := p.cur, newRecorder()
	names := keysOf(d.Changed)
	slices.SortFunc(names, model.ServicePortName.Compare)
	for _, name := range names {
		rs.removePort(name, rec)
		if sp := findPort(d, name); sp != nil {
			rs.addPort(sp, rec)
		}
	}
	if t, ok := diff(recorded{r: rec, cur: rs}, rs, rec); ok {
		return t, rs
	}
	rs = Render(d)
	return &Transaction{Replace: rs}, rs
}

// findPort finds a port in d.Services, which are sorted by name.
func findPort(d *proxy.Desired, name model.ServicePortName) *proxy.Port {
	i, ok := slices.BinarySearchFunc(d.Services, name, func(p *proxy.Port, n model.ServicePortName) int { return p.Name.Compare(n) })
	if !ok {
		return nil
	}
	return d.Services[i]
}
