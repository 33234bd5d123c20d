package ipvs

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
	"github.com/kdive/kdive/internal/proxy"
)

// The name index. IPVS knows a virtual server by address, protocol and
// port only, and the mode's ipsets and iptables rules name no service: the
// kernel alone cannot say which service port a virtual server is. So Sync
// keeps one more ipset, KUBE-IPVS-NAMES (hash:ip,port with comments), that
// no rule matches: one element per address virtual server, commented
//
//	<namespace>/<name>[:<port>] <kind>[ internal=Local][ external=Local]
//
// The traffic policies are recorded because the kernel cannot always show
// them: an internalTrafficPolicy: Local port with local endpoints looks
// like any other. Firewall-mark (short-circuit) virtual servers need no
// element: KUBE-SHORT-CIRCUIT maps their service's external addresses to
// their mark. Inspect reads the index back (`ipset list KUBE-IPVS-NAMES`
// shows it too); Cleanup destroys it with the other sets.
const setNames = "KUBE-IPVS-NAMES"

// recordedName is one parsed element comment of the name index.
type recordedName struct {
	name                         model.ServicePortName // Protocol unset
	kind                         Kind
	internalLocal, externalLocal bool
}

func nameComment(p *proxy.Port, kind Kind) string {
	c := p.Name.String() + " " + string(kind)
	if p.InternalPolicyLocal {
		c += " internal=Local"
	}
	if p.ExternalPolicyLocal {
		c += " external=Local"
	}
	return c
}

func parseNameComment(c string) (recordedName, bool) {
	f := strings.Fields(c)
	if len(f) < 2 {
		return recordedName{}, false
	}
	ns, rest, ok := strings.Cut(f[0], "/")
	if !ok || ns == "" || rest == "" {
		return recordedName{}, false
	}
	name, port, _ := strings.Cut(rest, ":")
	rec := recordedName{name: model.ServicePortName{Namespace: ns, Name: name, Port: port}, kind: Kind(f[1])}
	for _, flag := range f[2:] {
		switch flag {
		case "internal=Local":
			rec.internalLocal = true
		case "external=Local":
			rec.externalLocal = true
		default:
			return recordedName{}, false
		}
	}
	return rec, true
}

// recordName adds an address virtual server of p to the plan's name index.
func (rd *renderer) recordName(p *proxy.Port, v VirtualServer) {
	if v.FWMark != 0 {
		return
	}
	rd.r.names = append(rd.r.names, kernel.CommentedEntry{
		IPSetEntry: ipPort(v.Address, p.Name.Protocol, int(v.Port)),
		Comment:    nameComment(p, v.Kind),
	})
}

// syncNames makes KUBE-IPVS-NAMES hold the plan's name index: it creates
// the set, adds missing elements, rewrites changed comments in place and
// returns the elements to delete with the other stale set entries.
func syncNames(sets *kernel.IPSets, r *Ruleset, stats *SyncStats) ([]setEntry, error) {
	cur, err := sets.ListWithComments(setNames)
	if errors.Is(err, kernel.ErrNotFound) {
		if err := sets.CreateWithComments(kernel.IPSetSpec{Name: setNames, Type: "hash:ip,port"}); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	have := map[string]kernel.CommentedEntry{}
	for _, e := range cur {
		have[e.Key()] = e
	}
	want := map[string]bool{}
	for _, n := range r.names {
		want[n.Key()] = true
		h, ok := have[n.Key()]
		if ok && h.Comment == n.Comment {
			continue
		}
		if err := sets.AddWithComment(setNames, n.IPSetEntry, n.Comment, ok); err != nil {
			return nil, fmt.Errorf("name index: %w", err)
		}
		stats.SetEntriesAdded++
	}
	var stale []setEntry
	for k, e := range have {
		if !want[k] {
			stale = append(stale, setEntry{setNames, e.IPSetEntry})
		}
	}
	return stale, nil
}
