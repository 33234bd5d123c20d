package k8s

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// APIServerPort is the API server's secure port, as on kubeadm clusters.
const APIServerPort = 6443

// ClusterDomain is the cluster's DNS domain.
const ClusterDomain = "cluster.local"

// Cluster is what the control plane's components need to know of a lab
// cluster. Dir holds its PKI, tokens and kubeconfigs.
type Cluster struct {
	Lab         string
	Dir         string
	APIServerIP netip.Addr
	PodCIDR     netip.Prefix
	BlockSize   int
	ServiceCIDR netip.Prefix
	// Nodes are the names of the nodes whose kubelets get credentials.
	Nodes []string
}

// APIServerURL is where every component reaches the API server.
func (c *Cluster) APIServerURL() string {
	return "https://" + net.JoinHostPort(c.APIServerIP.String(), strconv.Itoa(APIServerPort))
}

// KubernetesServiceIP is the first address of the service range, the
// kubernetes Service's cluster IP.
func (c *Cluster) KubernetesServiceIP() netip.Addr { return c.ServiceCIDR.Addr().Next() }

// DNSServiceIP is the service range's tenth address, kube-dns's cluster IP
// in the reference clusters.
func (c *Cluster) DNSServiceIP() netip.Addr {
	a := c.ServiceCIDR.Addr()
	for range 10 {
		a = a.Next()
	}
	return a
}

// File is a path under the cluster's directory.
func (c *Cluster) File(name string) string { return filepath.Join(c.Dir, name) }

// Identities that get a token and a kubeconfig, besides the kubelets.
const (
	Admin             = "admin"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
)

// KubeletIdentity is the kubeconfig name of node's kubelet.
func KubeletIdentity(node string) string { return "kubelet-" + node }

// Kubeconfig is the path of an identity's kubeconfig.
func (c *Cluster) Kubeconfig(identity string) string {
	return c.File(identity + ".kubeconfig")
}

// WriteCredentials makes the CA, the API server's certificates, the
// service-account key, a token per identity (tokens.csv) and a
// kubeconfig for each, all under Dir.
func (c *Cluster) WriteCredentials() error {
	ca, err := NewCA("kdive-lab-" + c.Lab)
	if err != nil {
		return err
	}
	serving, err := ca.Issue("kube-apiserver", nil,
		[]net.IP{c.APIServerIP.AsSlice(), c.KubernetesServiceIP().AsSlice(), net.IPv4(127, 0, 0, 1)},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + ClusterDomain})
	if err != nil {
		return err
	}
	kubeletClient, err := ca.Issue("kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil)
	if err != nil {
		return err
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	saKey, err := NewSigningKey()
	if err != nil {
		return err
	}
	type user struct{ name, group string }
	users := map[string]user{
		Admin:             {"kubernetes-admin", "system:masters"},
		ControllerManager: {"system:kube-controller-manager", ""},
		Scheduler:         {"system:kube-scheduler", ""},
	}
	for _, n := range c.Nodes {
		users[KubeletIdentity(n)] = user{"system:node:" + n, "system:nodes"}
	}
	files := map[string][]byte{
		"ca.crt": ca.PEM, "ca.key": caKey,
		"apiserver.crt": serving.Cert, "apiserver.key": serving.Key,
		"apiserver-kubelet-client.crt": kubeletClient.Cert, "apiserver-kubelet-client.key": kubeletClient.Key,
		"sa.key": saKey,
	}
	ids := make([]string, 0, len(users))
	for id := range users {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var csv strings.Builder
	for _, id := range ids {
		u, tok := users[id], NewToken()
		fmt.Fprintf(&csv, "%s,%s,%s", tok, u.name, u.name)
		if u.group != "" {
			fmt.Fprintf(&csv, ",%q", u.group)
		}
		csv.WriteString("\n")
		kc, err := c.kubeconfig(id, tok, ca.PEM)
		if err != nil {
			return err
		}
		files[id+".kubeconfig"] = kc
	}
	files["tokens.csv"] = []byte(csv.String())
	return WriteFiles(c.Dir, files)
}

func (c *Cluster) kubeconfig(user, token string, caPEM []byte) ([]byte, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[c.Lab] = &clientcmdapi.Cluster{Server: c.APIServerURL(), CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[c.Lab] = &clientcmdapi.Context{Cluster: c.Lab, AuthInfo: user}
	cfg.CurrentContext = c.Lab
	return clientcmd.Write(*cfg)
}

// Etcd's client address, on the control plane's loopback only.
const etcdClientURL = "http://127.0.0.1:2379"

// EtcdArgs is etcd's command line.
func (c *Cluster) EtcdArgs() []string {
	const peer = "http://127.0.0.1:2380"
	return []string{
		"--name=" + c.Lab, "--data-dir=" + c.File("etcd"),
		"--listen-client-urls=" + etcdClientURL, "--advertise-client-urls=" + etcdClientURL,
		"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=" + c.Lab + "=" + peer, "--log-level=warn",
		// Labs are throwaway: no fsync per write.
		"--unsafe-no-fsync",
	}
}

// APIServerArgs is kube-apiserver's command line.
func (c *Cluster) APIServerArgs() []string {
	return []string{
		"--etcd-servers=" + etcdClientURL,
		"--advertise-address=" + c.APIServerIP.String(), "--bind-address=0.0.0.0",
		"--secure-port=" + strconv.Itoa(APIServerPort),
		"--tls-cert-file=" + c.File("apiserver.crt"), "--tls-private-key-file=" + c.File("apiserver.key"),
		"--client-ca-file=" + c.File("ca.crt"),
		"--token-auth-file=" + c.File("tokens.csv"),
		"--kubelet-client-certificate=" + c.File("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + c.File("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--service-account-issuer=https://kubernetes.default.svc." + ClusterDomain,
		"--service-account-key-file=" + c.File("sa.key"),
		"--service-account-signing-key-file=" + c.File("sa.key"),
		"--service-cluster-ip-range=" + c.ServiceCIDR.String(),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--profiling=false",
	}
}

// ControllerManagerArgs is kube-controller-manager's command line: the
// default controllers, node IPAM cutting PodCIDR into BlockSize blocks.
func (c *Cluster) ControllerManagerArgs() []string {
	kc := c.Kubeconfig(ControllerManager)
	return []string{
		"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--allocate-node-cidrs=true",
		"--cluster-cidr=" + c.PodCIDR.String(),
		"--node-cidr-mask-size=" + strconv.Itoa(c.BlockSize),
		"--service-cluster-ip-range=" + c.ServiceCIDR.String(),
		"--root-ca-file=" + c.File("ca.crt"),
		"--service-account-private-key-file=" + c.File("sa.key"),
		"--use-service-account-credentials=true",
		"--cluster-signing-cert-file=" + c.File("ca.crt"),
		"--cluster-signing-key-file=" + c.File("ca.key"),
		"--profiling=false",
	}
}

// SchedulerArgs is kube-scheduler's command line.
func (c *Cluster) SchedulerArgs() []string {
	kc := c.Kubeconfig(Scheduler)
	return []string{
		"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--profiling=false",
	}
}
