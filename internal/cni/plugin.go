package cni

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/kdive/kdive/internal/cni/ipam"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/model"
)

// SupportedVersions are the CNI spec versions the plugin accepts.
var SupportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// Funcs returns the plugin's command handlers for skel.PluginMainFuncs.
// VERSION is answered by skel itself from SupportedVersions. The plugin
// works on the network namespace it runs in (the node's) and on CNI_NETNS.
func Funcs() skel.CNIFuncs {
	return newPlugin(func() (*kernel.NetNS, error) { return kernel.OpenNetNS("/proc/self/ns/net") }).funcs()
}

// plugin runs the commands; host opens the node's namespace (the process's
// own for the real plugin, a test's "node" namespace in tests).
type plugin struct {
	host func() (*kernel.NetNS, error)
}

func newPlugin(host func() (*kernel.NetNS, error)) *plugin { return &plugin{host: host} }

func (p *plugin) funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    p.cmdAdd,
		Del:    p.cmdDel,
		Check:  p.cmdCheck,
		GC:     p.cmdGC,
		Status: p.cmdStatus,
	}
}

// cniError makes the error returned to the runtime: the message says which
// command on which attachment failed and why, the code is that of the
// innermost *types.Error in err (ErrInternal when there is none).
func cniError(op string, err error) error {
	code := types.ErrInternal
	var te *types.Error
	if errors.As(err, &te) {
		code = te.Code
	}
	return types.NewError(code, "kdive-cni: "+op+": "+err.Error(), "")
}

// coded wraps err with a CNI error code (kept by cniError).
func coded(code uint, err error) error {
	return &codedError{te: types.NewError(code, err.Error(), ""), err: err}
}

// codedError carries a code for errors.As(*types.Error) while keeping the
// original error for errors.Is.
type codedError struct {
	te  *types.Error
	err error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() []error {
	return []error{e.te, e.err}
}

// opName names a command on an attachment for messages: "ADD c1/eth0".
func opName(cmd string, args *skel.CmdArgs) string {
	return fmt.Sprintf("%s %s/%s", cmd, args.ContainerID, args.IfName)
}

var containerIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.\-]*$`)

const maxContainerID = 200

// attachmentOf checks CNI_CONTAINERID and CNI_IFNAME. skel checks them too;
// the plugin does not rely on that, since both end up in names and files.
func attachmentOf(args *skel.CmdArgs) (ipam.Attachment, error) {
	a := ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	switch {
	case a.ContainerID == "":
		return a, coded(types.ErrInvalidEnvironmentVariables, errors.New("CNI_CONTAINERID is empty"))
	case len(a.ContainerID) > maxContainerID:
		return a, coded(types.ErrInvalidEnvironmentVariables,
			fmt.Errorf("CNI_CONTAINERID is %d characters long; at most %d are allowed", len(a.ContainerID), maxContainerID))
	case !containerIDRE.MatchString(a.ContainerID):
		return a, coded(types.ErrInvalidEnvironmentVariables,
			fmt.Errorf("CNI_CONTAINERID %q: only letters, digits, '_', '.' and '-' are allowed, starting with a letter or digit", a.ContainerID))
	}
	if err := checkIfName(a.IfName); err != nil {
		return a, coded(types.ErrInvalidEnvironmentVariables, fmt.Errorf("CNI_IFNAME: %w", err))
	}
	return a, nil
}

// checkIfName rejects names the kernel would refuse or mangle.
func checkIfName(name string) error {
	switch {
	case name == "":
		return errors.New("interface name is empty")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is %d bytes long; the kernel allows 15", name, len(name))
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is not allowed", name)
	case strings.ContainsFunc(name, func(r rune) bool { return r == '/' || r == ':' || unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		return fmt.Errorf("interface name %q contains '/', ':', a space or a control character", name)
	}
	return nil
}

// openPodNS opens CNI_NETNS, which must be an absolute path to a network
// namespace other than the node's.
func openPodNS(path string, host *kernel.NetNS) (*kernel.NetNS, error) {
	if path == "" {
		return nil, coded(types.ErrInvalidEnvironmentVariables, errors.New("CNI_NETNS is empty"))
	}
	if !filepath.IsAbs(path) {
		return nil, coded(types.ErrInvalidNetNS, fmt.Errorf("netns %q: not an absolute path", path))
	}
	pod, err := kernel.OpenNetNS(path)
	if err != nil {
		return nil, coded(types.ErrInvalidNetNS, err)
	}
	same, err := pod.SameNetNS(host)
	if err != nil {
		pod.Close()
		return nil, coded(types.ErrInvalidNetNS, err)
	}
	if same {
		pod.Close()
		return nil, coded(types.ErrInvalidNetNS, fmt.Errorf("netns %s is the node's own network namespace, not a pod's", path))
	}
	return pod, nil
}

func (p *plugin) openHost() (*kernel.NetNS, error) {
	h, err := p.host()
	if err != nil {
		return nil, fmt.Errorf("open the node's network namespace: %w", err)
	}
	return h, nil
}

// hostVethName is the host-side name of an attachment's veth: in routed
// mode the prefix (cali) and the start of sha1(containerID/ifname), 15
// characters in all like Calico's; in bridge mode "veth" and 8 hex digits,
// like the bridge plugin's. The hash covers the interface name so two
// interfaces of one pod never share a host side.
func hostVethName(c *NetConf, a ipam.Attachment) string {
	sum := sha1.Sum([]byte(a.ContainerID + "/" + a.IfName))
	h := hex.EncodeToString(sum[:])
	if c.Mode == model.InterfaceBridge {
		return "veth" + h[:8]
	}
	return c.HostVethPrefix + h[:15-len(c.HostVethPrefix)]
}

// vethAliasPrefix starts the ifalias of every host-side veth the plugin
// creates, followed by "containerID/ifname": how GC recognises its own.
const vethAliasPrefix = "kdive-cni:"

func vethAlias(a ipam.Attachment) string { return vethAliasPrefix + a.String() }

// aliasAttachment reads an attachment back from a host veth's alias.
func aliasAttachment(alias string) (ipam.Attachment, bool) {
	rest, ok := strings.CutPrefix(alias, vethAliasPrefix)
	if !ok {
		return ipam.Attachment{}, false
	}
	id, ifname, ok := strings.Cut(rest, "/")
	if !ok || id == "" || ifname == "" {
		return ipam.Attachment{}, false
	}
	return ipam.Attachment{ContainerID: id, IfName: ifname}, true
}

// storeOf opens the IPAM store of a configuration.
func storeOf(c *NetConf) (*ipam.Store, error) {
	s, err := ipam.New(c.DataDir, c.Block)
	if err != nil {
		return nil, coded(types.ErrInvalidNetworkConfig, err)
	}
	return s, nil
}

// ipamError gives IPAM failures their code: a full block is the plugin
// failing (ErrInternal); anything else is the store's disk (ErrIOFailure).
func ipamError(err error) error {
	if errors.Is(err, ipam.ErrFull) {
		return coded(types.ErrInternal, err)
	}
	return coded(types.ErrIOFailure, err)
}
