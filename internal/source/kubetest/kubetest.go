// Package kubetest runs a real kube-apiserver, backed by a real etcd, on
// the loopback of a test's network namespace, for integration tests of the
// agent against the API server it meets on a cluster.
//
// The binaries are built from released modules by hack/kubernetes (a module
// of its own: k8s.io/kubernetes v1.37.2 with its staging modules replaced
// by v0.37.2, and etcd v3.7.0); `make apiserver` puts them in bin/, and
// `make test` passes that directory as KDIVE_TEST_BINDIR. Without them the
// tests skip and say so.
//
// Both servers listen on 127.0.0.1 inside the namespace only; the test
// process reaches them through the namespace's dialer, so nothing listens
// on or talks to the machine's own network.
package kubetest

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kdive/kdive/internal/kernel"
)

// Addresses inside the namespace.
const (
	Host        = "https://127.0.0.1:6443"
	etcdClient  = "http://127.0.0.1:2379"
	etcdPeer    = "http://127.0.0.1:2380"
	adminToken  = "kdive-test-admin-token"
	ServiceCIDR = "10.96.0.0/16"
)

// Server is a running kube-apiserver with its etcd.
type Server struct {
	t       testing.TB
	ns      *kernel.NetNS
	dir     string
	bin     string
	caPEM   []byte
	apiArgs []string
	etcd    *exec.Cmd
	api     *exec.Cmd
}

// Binaries returns the directory holding kube-apiserver and etcd, or skips
// the test saying how to get them.
func Binaries(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KDIVE_TEST_BINDIR")
	if dir == "" {
		t.Skip("needs a real kube-apiserver and etcd: set KDIVE_TEST_BINDIR to a directory holding them (`make apiserver` builds them into bin/; `make test` does this)")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Skipf("needs %s in KDIVE_TEST_BINDIR=%s (`make apiserver` builds it): %v", b, dir, err)
		}
	}
	return dir
}

// Start starts etcd and kube-apiserver in ns (whose loopback must be up)
// and waits until the API server is ready. Authorization is RBAC; the
// admin client (AdminConfig) is in system:masters. They are stopped when
// the test ends.
func Start(t testing.TB, ns *kernel.NetNS) *Server {
	t.Helper()
	bin := Binaries(t)
	s := &Server{t: t, ns: ns, dir: t.TempDir(), bin: bin}
	if err := s.writeCredentials(); err != nil {
		t.Fatalf("kubetest: credentials: %v", err)
	}
	t.Cleanup(s.stopAll)
	s.etcd = s.start("etcd", filepath.Join(bin, "etcd"),
		"--name=default", "--data-dir="+filepath.Join(s.dir, "etcd"),
		"--listen-client-urls="+etcdClient, "--advertise-client-urls="+etcdClient,
		"--listen-peer-urls="+etcdPeer, "--initial-advertise-peer-urls="+etcdPeer,
		"--initial-cluster=default="+etcdPeer, "--log-level=warn")
	s.apiArgs = []string{
		"--etcd-servers=" + etcdClient,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=6443",
		"--tls-cert-file=" + s.file("serving.crt"), "--tls-private-key-file=" + s.file("serving.key"),
		"--client-ca-file=" + s.file("serving.crt"),
		"--token-auth-file=" + s.file("tokens.csv"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + s.file("sa.key"),
		"--service-account-signing-key-file=" + s.file("sa.key"),
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--authorization-mode=RBAC",
		"--endpoint-reconciler-type=none",
		// No controller-manager runs, so no namespace gets its default
		// ServiceAccount; pods are created without one.
		"--disable-admission-plugins=ServiceAccount",
		"--enable-priority-and-fairness=false",
	}
	s.startAPI()
	return s
}

func (s *Server) file(name string) string { return filepath.Join(s.dir, name) }

// start runs a server in the namespace, its output in a log file.
func (s *Server) start(name, path string, args ...string) *exec.Cmd {
	s.t.Helper()
	log, err := os.OpenFile(s.file(name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatalf("kubetest: %v", err)
	}
	defer log.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := s.ns.Start(cmd); err != nil {
		s.t.Fatalf("kubetest: start %s: %v", name, err)
	}
	return cmd
}

func (s *Server) startAPI() {
	s.t.Helper()
	s.api = s.start("kube-apiserver", filepath.Join(s.bin, "kube-apiserver"), s.apiArgs...)
	if err := s.waitReady(90 * time.Second); err != nil {
		s.t.Fatalf("kubetest: kube-apiserver not ready: %v\n%s", err, s.LogTail("kube-apiserver", 30))
	}
}

// Restart stops the API server (SIGTERM, as a control-plane upgrade does)
// and starts it again over the same etcd: every watch breaks and clients
// relist or rewatch.
func (s *Server) Restart() {
	s.t.Helper()
	stop(s.api, syscall.SIGTERM)
	s.startAPI()
}

func (s *Server) stopAll() {
	stop(s.api, syscall.SIGTERM)
	stop(s.etcd, syscall.SIGTERM)
}

// stop signals cmd and waits for it, killing it after 15 s.
func stop(cmd *exec.Cmd, sig syscall.Signal) {
	if cmd == nil || cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// waitReady polls /readyz until it answers ok.
func (s *Server) waitReady(timeout time.Duration) error {
	hc := s.httpClient()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if s.api.ProcessState != nil {
			return fmt.Errorf("exited: %s", s.api.ProcessState)
		}
		req, _ := http.NewRequest(http.MethodGet, Host+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := hc.Do(req)
		if err == nil {
			b, _ := readAll(resp)
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/readyz: %s: %s", resp.Status, b)
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("after %s: %w", timeout, last)
}

func readAll(resp *http.Response) (string, error) {
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err := b.ReadFrom(resp.Body)
	return b.String(), err
}

// httpClient talks to the API server through the namespace's dialer.
func (s *Server) httpClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.caPEM)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext:     s.ns.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}}
}

// LogTail returns the last n lines a server ("etcd", "kube-apiserver")
// logged.
func (s *Server) LogTail(name string, n int) string {
	b, err := os.ReadFile(s.file(name + ".log"))
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// AdminConfig is a client configuration for the cluster's administrator
// (system:masters), dialing inside the namespace; for the test process.
func (s *Server) AdminConfig() *rest.Config {
	return &rest.Config{
		Host: Host, BearerToken: adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.caPEM},
		Dial:            s.ns.DialContext,
		QPS:             -1,
	}
}

// Admin is a clientset for AdminConfig.
func (s *Server) Admin() kubernetes.Interface {
	s.t.Helper()
	c, err := kubernetes.NewForConfig(s.AdminConfig())
	if err != nil {
		s.t.Fatalf("kubetest: admin client: %v", err)
	}
	return c
}

// WriteKubeconfig writes a kubeconfig for a process running in the
// namespace, authenticating with token (the admin's when empty), and
// returns its path.
func (s *Server) WriteKubeconfig(name, token string) string {
	s.t.Helper()
	if token == "" {
		token = adminToken
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: Host, CertificateAuthorityData: s.caPEM}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: name}
	cfg.CurrentContext = "test"
	path := s.file(name + ".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		s.t.Fatalf("kubetest: write kubeconfig: %v", err)
	}
	return path
}

// writeCredentials makes the serving certificate (self-signed, for
// 127.0.0.1), the service-account signing key and the token file.
func (s *Server) writeCredentials() error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kdive-test-apiserver"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	s.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)})
	files := map[string][]byte{
		"serving.crt": s.caPEM,
		"serving.key": keyPEM,
		"sa.key":      saPEM,
		"tokens.csv":  []byte(adminToken + ",admin,admin,system:masters\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(s.file(name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
