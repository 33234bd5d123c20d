package nft

// Transaction is a change to one table, applied atomically: every
// operation or none. Build it with NewTransaction and the verbs; apply it
// with an Interface's Run.
type Transaction struct {
	table Table
	ops   []op
	// labels say, from which operation on, whose operations these are.
	labels []labelMark
	// tableOps: the transaction creates or deletes the table itself.
	tableOps bool
}

type op struct {
	verb verb
	obj  Object
}

type labelMark struct {
	op    int
	label string
}

// NewTransaction starts a transaction on table t (its Comment is unused:
// Add(&t) writes it).
func NewTransaction(t Table) *Transaction { return &Transaction{table: t} }

// Add adds the object, or leaves it be when it exists (an element that
// exists with another value is an error).
func (tx *Transaction) Add(o Object) { tx.push(add, o) }

// Create adds the object; that it exists is an error.
func (tx *Transaction) Create(o Object) { tx.push(create, o) }

// Delete deletes the object (a rule by its Handle; an element by its Key);
// that it does not exist is an error.
func (tx *Transaction) Delete(o Object) { tx.push(del, o) }

// Flush empties a table, chain (of its rules), set or map (of its
// elements).
func (tx *Transaction) Flush(o Object) { tx.push(flush, o) }

func (tx *Transaction) push(v verb, o Object) {
	if _, ok := o.(*Table); ok {
		tx.tableOps = true
	}
	tx.ops = append(tx.ops, op{v, o})
}

// Label says whose the following operations are (a service port's name,
// say; "" for nobody's): an *Error names the labels of the operations nft
// refused.
func (tx *Transaction) Label(l string) {
	n := len(tx.labels)
	switch {
	case n > 0 && tx.labels[n-1].label == l:
	case n > 0 && tx.labels[n-1].op == len(tx.ops):
		tx.labels[n-1].label = l
	case n == 0 && l == "":
	default:
		tx.labels = append(tx.labels, labelMark{len(tx.ops), l})
	}
}

// labelOf is the label of operation i.
func (tx *Transaction) labelOf(i int) string {
	l := ""
	for _, m := range tx.labels {
		if m.op > i {
			break
		}
		l = m.label
	}
	return l
}

// Len is the number of operations.
func (tx *Transaction) Len() int { return len(tx.ops) }

// Empty says there is nothing to apply.
func (tx *Transaction) Empty() bool { return len(tx.ops) == 0 }

// String is the transaction as an nft script (`nft -f`).
func (tx *Transaction) String() string {
	b, _ := tx.script(false)
	return string(b)
}

// script renders the transaction for `nft -f` and, with lines, which
// operation each line (index line-1) is part of. A run of elements added
// to or deleted from one set is one command, an element per line: nft
// parses that much faster than a command per element.
func (tx *Transaction) script(lines bool) ([]byte, []int) {
	n := 64
	for _, o := range tx.ops {
		if _, ok := o.obj.(*Element); ok {
			n += 48
		} else {
			n += 96
		}
	}
	b := make([]byte, 0, n)
	var lineOps []int
	mark := func(i int) {
		if lines {
			lineOps = append(lineOps, i)
		}
	}
	for i := 0; i < len(tx.ops); {
		o := tx.ops[i]
		e, ok := o.obj.(*Element)
		if !ok || (o.verb != add && o.verb != del) || !tx.sameRun(i+1, o.verb, e) {
			b = o.obj.appendOp(b, o.verb, tx.table)
			b = append(b, '\n')
			mark(i)
			i++
			continue
		}
		j := i + 1
		for tx.sameRun(j, o.verb, e) {
			j++
		}
		b = appendHead(b, o.verb, "element", tx.table)
		b = append(b, ' ')
		b = append(b, e.container()...)
		b = append(b, " {\n"...)
		mark(i)
		for k := i; k < j; k++ {
			b = append(b, '\t')
			b = tx.ops[k].obj.(*Element).appendBody(b, o.verb != del)
			b = append(b, ",\n"...)
			mark(k)
		}
		b = append(b, "}\n"...)
		mark(j - 1)
		i = j
	}
	return b, lineOps
}

// sameRun says whether operation i does verb to an element of e's set.
func (tx *Transaction) sameRun(i int, v verb, e *Element) bool {
	if i >= len(tx.ops) || tx.ops[i].verb != v {
		return false
	}
	f, ok := tx.ops[i].obj.(*Element)
	return ok && f.Set == e.Set && f.Map == e.Map
}

// commands renders one command per operation (an nft session reads a line
// at a time).
func (tx *Transaction) commands() []string {
	out := make([]string, len(tx.ops))
	var b []byte
	for i, o := range tx.ops {
		b = o.obj.appendOp(b[:0], o.verb, tx.table)
		out[i] = string(b)
	}
	return out
}

// labelsOf are the distinct non-empty labels of the operations, in order.
func (tx *Transaction) labelsOf(ops []int) []string {
	var out []string
	seen := map[string]bool{}
	for _, i := range ops {
		if l := tx.labelOf(i); l != "" && !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return out
}

// Error is nft refusing a transaction, which then changed nothing: nft's
// message, and the labels of the operations it named.
type Error struct {
	Msg    string
	Labels []string
}

func (e *Error) Error() string { return "nft: " + e.Msg }

// Objects are the objects operated on, in order (for tests that look at
// or break a transaction before it runs).
func (tx *Transaction) Objects() []Object {
	out := make([]Object, len(tx.ops))
	for i, o := range tx.ops {
		out[i] = o.obj
	}
	return out
}
