package nftables

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// Options configure a Proxier.
type Options struct {
	// NetNS is the network namespace whose nftables the proxier programs
	// (the node's).
	NetNS *kernel.NetNS
}

// Proxier is the nftables proxy backend. It remembers what it programmed
// and sends only the difference, one atomic transaction per Sync.
type Proxier struct {
	opts Options

	mu sync.Mutex
	// cur is what the kernel holds; nil when unknown (before the first
	// Sync, after a failed one, after Cleanup): the next Sync replaces the
	// table whole.
	cur *Ruleset
	// session applies incremental transactions without starting nft;
	// noSession: it failed, use nft -f.
	session   *kernel.NftSession
	noSession bool
	// nft applies a script; tests wrap it.
	nft func(ctx context.Context, script string) error
	// adopted is the table an earlier proxier left in the kernel (an
	// agent before a restart), read by the first Sync; adoptTried says it
	// was looked for.
	adopted    *Ruleset
	adoptTried bool
}

// maxSessionScript: bigger transactions (and every table replace) go
// through `nft -f` rather than the session.
const maxSessionScript = 512 << 10 // lines of 600 KB were tried

var _ proxy.Backend = (*Proxier)(nil)

// New returns a Proxier; it does nothing until Sync.
func New(opts Options) *Proxier {
	p := &Proxier{opts: opts}
	p.nft = p.runNft
	return p
}

// Mode is "nftables".
func (p *Proxier) Mode() string { return "nftables" }

var errNoNetNS = errors.New("nftables proxier: no network namespace")

// runNft applies a script: a table replace (multi-line blocks) or a big
// one with `nft -f`, an incremental one (one command per line) through the
// long-running session.
func (p *Proxier) runNft(ctx context.Context, script string) error {
	if p.opts.NetNS == nil {
		return errNoNetNS
	}
	if strings.HasPrefix(script, "add table") || len(script) > maxSessionScript {
		return p.opts.NetNS.Nft(ctx, script)
	}
	if p.noSession {
		return p.opts.NetNS.Nft(ctx, script)
	}
	if p.session == nil {
		p.session = p.opts.NetNS.NftSession()
	}
	err := p.session.Apply(ctx, strings.Split(strings.TrimSuffix(script, "\n"), "\n"))
	var nerr *kernel.NftError
	if err == nil || errors.As(err, &nerr) || ctx.Err() != nil {
		return err
	}
	// The session broke, or this nft has no interactive mode: from now on
	// use nft -f. Retrying is safe: the transaction either was applied
	// whole, and then fails again (forcing a replace), or not at all.
	p.session.Close()
	p.noSession = true
	return p.opts.NetNS.Nft(ctx, script)
}

// Close stops the helper process the proxier keeps for incremental
// updates. The rules stay; a later Sync starts it again.
func (p *Proxier) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.session == nil {
		return nil
	}
	return p.session.Close()
}

// Sync makes the table implement d. The first Sync adopts the table an
// earlier proxier left (sending only the difference); without one, and
// after a failure, it replaces the table in one transaction; later ones send only
// what changed, for the ports d.Changed names (when nil, for the ports
// that differ from the last Sync's). A Sync that changes nothing sends
// nothing. When nft fails, the kernel
// keeps the previous rules and the next Sync starts over with a replace.
func (p *Proxier) Sync(ctx context.Context, d *proxy.Desired) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil && !p.adoptTried {
		p.adoptTried = true
		p.adopted = p.adopt(ctx)
	}
	t, next := p.plan(d)
	if t.Empty() {
		p.cur = next
		return nil
	}
	w := t.script()
	if err := p.nft(ctx, w.String()); err != nil {
		p.cur = nil
		if owners := w.owners(errLines(err)); len(owners) > 0 {
			return fmt.Errorf("sync service %s: %w", strings.Join(owners, ", "), err)
		}
		return fmt.Errorf("sync table %s %s: %w", Family, Table, err)
	}
	p.cur = next
	return nil
}

// adopt reads the table an earlier proxier left (an agent restarting), so
// that the first Sync sends only what differs instead of replacing the
// table: a restart then changes nothing in the kernel, and session
// affinity survives it. The affinity sets' elements (clients the kernel
// added itself) are left out of what was read, so the difference never
// removes them. Anything unreadable (no table, a shape kdive never writes)
// means no adoption: the first Sync replaces the table as before.
func (p *Proxier) adopt(ctx context.Context) *Ruleset {
	if p.opts.NetNS == nil {
		return nil
	}
	out, err := p.opts.NetNS.Run(ctx, "", "nft", "-j", "list", "table", Family, Table)
	if err != nil {
		return nil
	}
	l, err := parseListing([]byte(out))
	if err != nil {
		return nil
	}
	for _, set := range l.rs.Sets {
		if set.Kind == Clients {
			set.elems = map[mkey]*slot{}
		}
	}
	return l.rs
}

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
	if !globalsOf(d).equal(p.cur.glob) {
		rs := Render(d)
		if t, ok := diff(p.cur, rs, nil); ok {
			return t, rs
		}
		return &Transaction{Replace: rs}, rs
	}
	changed := d.Changed
	if changed == nil {
		changed = p.cur.changedPorts(d)
	}
	rs, rec := p.cur, newRecorder()
	names := keysOf(changed)
	slices.SortFunc(names, portLess)
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

// errLines are the script lines (1-based) an nft error points at.
func errLines(err error) []int {
	var lines []int
	var nerr *kernel.NftError
	if errors.As(err, &nerr) {
		for _, c := range nerr.Commands {
			lines = append(lines, c+1)
		}
		return lines
	}
	for _, m := range nftErrLine.FindAllStringSubmatch(err.Error(), -1) {
		n, _ := strconv.Atoi(m[1])
		lines = append(lines, n)
	}
	return lines
}

// findPort finds a port in d.Services, which are sorted by name.
func findPort(d *proxy.Desired, name model.ServicePortName) *proxy.Port {
	s := name.String()
	i := sort.Search(len(d.Services), func(i int) bool { return d.Services[i].Name.String() >= s })
	for ; i < len(d.Services) && d.Services[i].Name.String() == s; i++ {
		if d.Services[i].Name == name {
			return d.Services[i]
		}
	}
	for _, sp := range d.Services { // not sorted after all
		if sp.Name == name {
			return sp
		}
	}
	return nil
}
