package nft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"

	"github.com/kdive/kdive/internal/kernel"
)

// Interface is what programs and reads nftables: a Conn in a namespace,
// or a Fake.
type Interface interface {
	// Run applies the transaction atomically. When nft refuses it,
	// nothing changed and the error wraps an *Error.
	Run(ctx context.Context, tx *Transaction) error
	// List reads the table; one that does not exist is an error wrapping
	// ErrNotFound.
	List(ctx context.Context, t Table) (*Listing, error)
	// Generation is the namespace's nftables generation: it changes with
	// every committed transaction of anyone.
	Generation() (uint32, error)
}

// ErrNotFound is wrapped by List's error for a table that does not exist.
var ErrNotFound = kernel.ErrNotFound

// Conn programs the nftables of one network namespace.
type Conn struct {
	ns         *kernel.NetNS
	useSession bool

	mu        sync.Mutex
	session   *session
	noSession bool

	genMu sync.Mutex
	gen   *netlink.Conn
}

var _ Interface = (*Conn)(nil)

// Option configures a Conn.
type Option func(*Conn)

// WithSession applies small transactions through one long-running `nft -i`
// (see the package doc); Close ends it. For long-lived programs that
// change a table often.
func WithSession() Option { return func(c *Conn) { c.useSession = true } }

// New returns a Conn in ns; it starts nothing until used.
func New(ns *kernel.NetNS, opts ...Option) *Conn {
	c := &Conn{ns: ns}
	for _, o := range opts {
		o(c)
	}
	return c
}

// maxSessionOps: bigger transactions go through `nft -f`, where runs of
// elements are blocks.
const maxSessionOps = 4096

// Run applies tx atomically: through the session when the Conn has one
// and tx is small and leaves the table itself alone, else with `nft -f`.
func (c *Conn) Run(ctx context.Context, tx *Transaction) error {
	if tx.Empty() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.useSession || c.noSession || tx.tableOps || len(tx.ops) > maxSessionOps {
		return c.runFile(ctx, tx)
	}
	if c.session == nil {
		c.session = newSession(c.ns)
	}
	err := c.session.apply(ctx, tx.commands())
	var serr *sessionError
	if errors.As(err, &serr) {
		return fmt.Errorf("nft session in %s: %w", c.ns, &Error{Msg: serr.Msg, Labels: tx.labelsOf(serr.Commands)})
	}
	if err == nil || ctx.Err() != nil {
		return err
	}
	// The session broke, or this nft has no interactive mode: from now on
	// use nft -f, once that works (when nft itself is missing or broken,
	// the session is tried again later). Retrying is safe: the
	// transaction either was applied whole, and then fails again, or not
	// at all.
	c.session.close()
	if err := c.runFile(ctx, tx); err != nil {
		return err
	}
	c.noSession = true
	return nil
}

// errLine is where `nft -f -` says a complaint is: "/dev/stdin:LINE:COLS:".
var errLine = regexp.MustCompile(`(?m)^/dev/stdin:(\d+):`)

func (c *Conn) runFile(ctx context.Context, tx *Transaction) error {
	script, _ := tx.script(false)
	var errb bytes.Buffer
	err := c.ns.Do(func() error {
		cmd := exec.CommandContext(ctx, "nft", "-f", "-")
		cmd.Stdin = bytes.NewReader(script)
		cmd.Stderr = &errb
		return cmd.Run()
	})
	if err == nil {
		return nil
	}
	msg := strings.TrimSpace(errb.String())
	if !errors.As(err, new(*exec.ExitError)) || ctx.Err() != nil || msg == "" {
		if msg != "" {
			return fmt.Errorf("nft -f in %s: %w: %s", c.ns, err, msg)
		}
		return fmt.Errorf("nft -f in %s: %w", c.ns, err)
	}
	var ops []int
	if m := errLine.FindAllStringSubmatch(msg, -1); len(m) > 0 {
		_, lineOps := tx.script(true)
		for _, sm := range m {
			if n, err := strconv.Atoi(sm[1]); err == nil && n >= 1 && n <= len(lineOps) && !slices.Contains(ops, lineOps[n-1]) {
				ops = append(ops, lineOps[n-1])
			}
		}
	}
	return fmt.Errorf("nft -f in %s: %w", c.ns, &Error{Msg: msg, Labels: tx.labelsOf(ops)})
}

// ListJSON is `nft -j list table` of t, for callers that interpret rule
// expressions themselves (Listing keeps them raw); a missing table is an
// error wrapping ErrNotFound.
func (c *Conn) ListJSON(ctx context.Context, t Table) ([]byte, error) {
	return c.list(ctx, "-j", "list", "table", string(t.Family), t.Name)
}

// List reads table t.
func (c *Conn) List(ctx context.Context, t Table) (*Listing, error) {
	js, err := c.ListJSON(ctx, t)
	if err != nil {
		return nil, err
	}
	l, err := ParseListing(js)
	if err != nil {
		return nil, fmt.Errorf("list table %s in %s: %w", t, c.ns, err)
	}
	return l, nil
}

// RuleText is the rule of chain with handle as `nft -a list chain` prints
// it (for messages), or "" when there is none.
func (c *Conn) RuleText(ctx context.Context, t Table, chain string, handle int) string {
	out, err := c.list(ctx, "-a", "list", "chain", string(t.Family), t.Name, chain)
	if err != nil {
		return ""
	}
	suffix := fmt.Sprintf(" # handle %d", handle)
	for _, line := range strings.Split(string(out), "\n") {
		if rule, ok := strings.CutSuffix(strings.TrimSpace(line), suffix); ok {
			return rule
		}
	}
	return ""
}

func (c *Conn) list(ctx context.Context, args ...string) ([]byte, error) {
	var out, errb bytes.Buffer
	err := c.ns.Do(func() error {
		cmd := exec.CommandContext(ctx, "nft", args...)
		cmd.Stdout, cmd.Stderr = &out, &errb
		return cmd.Run()
	})
	if err == nil {
		return out.Bytes(), nil
	}
	msg := strings.TrimSpace(errb.String())
	what := "nft " + strings.Join(args, " ")
	// nft reports a missing table or chain with ENOENT's text; that is the
	// one message matched, here only.
	if strings.Contains(msg, "No such file or directory") {
		return nil, fmt.Errorf("%s in %s: %w", what, c.ns, ErrNotFound)
	}
	if msg == "" {
		return nil, fmt.Errorf("%s in %s: %w", what, c.ns, err)
	}
	return nil, fmt.Errorf("%s in %s: %w: %s", what, c.ns, err, msg)
}

// Close stops the session's process and the generation socket; the
// tables stay. Using the Conn again starts them again.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.session != nil {
		c.session.close()
	}
	c.mu.Unlock()
	c.genMu.Lock()
	defer c.genMu.Unlock()
	if c.gen != nil {
		err := c.gen.Close()
		c.gen = nil
		return err
	}
	return nil
}

// HasTable tells whether ns has table t, over netlink: no nft process (a
// node without the nft binary can ask).
func HasTable(ns *kernel.NetNS, t Table) (bool, error) {
	fam, ok := map[Family]nftables.TableFamily{
		IPv4: nftables.TableFamilyIPv4, IPv6: nftables.TableFamilyIPv6, Inet: nftables.TableFamilyINet,
		Bridge: nftables.TableFamilyBridge,
	}[t.Family]
	if !ok {
		return false, fmt.Errorf("nftables family %q", t.Family)
	}
	c, err := nftables.New(nftables.WithNetNSFd(ns.NetlinkNS()))
	if err != nil {
		return false, err
	}
	defer c.CloseLasting()
	tables, err := c.ListTablesOfFamily(fam)
	if err != nil {
		return false, fmt.Errorf("list nftables tables of %s: %w", ns, err)
	}
	for _, x := range tables {
		if x.Name == t.Name {
			return true, nil
		}
	}
	return false, nil
}
