package iptables

// sameAsSaved says whether the chain holds exactly these saved rules (the
// text after "-A CHAIN"): a full Sync compares the rules as iptables-save
// prints them back (xtables.Rule.AppendSave) with what it printed and
// restores only the chains that differ.
func (c *Chain) sameAsSaved(saved []string) bool {
	if len(saved) != len(c.Rules) {
		return false
	}
	var buf []byte
	for i := range c.Rules {
		buf = c.Rules[i].AppendSave(buf[:0])
		if len(buf) == 0 || string(buf[1:]) != saved[i] {
			return false
		}
	}
	return true
}
