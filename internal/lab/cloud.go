package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kdive/kdive/internal/fileutil"
	"github.com/kdive/kdive/internal/kernel"
	"github.com/kdive/kdive/internal/lab/k8s"
	"github.com/kdive/kdive/internal/source/labstore"
)

// The lab's cloud: in a Kubernetes lab one process on the control-plane
// host (`kdive lab cloud`, started by lab up, gone with the host's
// namespace) does what a cloud provider's controllers do for a cluster,
// in the spirit of cloud-provider-kind:
//
//   - LoadBalancer Services get an ingress IP from spec.loadBalancerCIDR
//     (lowest free first, kept while the Service lives), and the router
//     forwards each to a node as the plain lab's does (syncRouter);
//   - the API server is reachable from the host's loopback, as kind maps
//     its API port: lab up opens a listener on 127.0.0.1 in the host's
//     namespace and hands it over; each connection is carried to the API
//     server inside the lab. Only the host's loopback listens: nothing of
//     the lab is reachable from elsewhere, and no lab traffic leaves it.

// KubeconfigFile is the admin kubeconfig for use from the host, pointing
// at the forwarder on 127.0.0.1.
func (p *Plan) KubeconfigFile() string { return filepath.Join(Dir(p.Name), "kubeconfig") }

// startCloud opens the host's API listener, writes the host kubeconfig
// for it and starts `kdive lab cloud NAME` on the control-plane host with
// the listener as its fd 3.
func (p *Plan) startCloud(ctx context.Context, cp *kernel.NetNS, bins Binaries) error {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return fmt.Errorf("API forwarder: %w", err)
	}
	defer ln.Close()
	f, err := ln.File()
	if err != nil {
		return err
	}
	defer f.Close()
	if err := p.writeHostKubeconfig(ln.Addr().(*net.TCPAddr).Port); err != nil {
		return err
	}
	log := p.componentLog(p.controlPlaneDir(), "cloud")
	logf, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bins.Kdive, "lab", "cloud", p.Name)
	cmd.Env = append(os.Environ(), "KDIVE_LAB="+p.Name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cp.Start(cmd); err != nil {
		return componentError("lab cloud", log, err)
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	_ = fileutil.WriteAtomic(strings.TrimSuffix(log, ".log")+".pid", []byte(strconv.Itoa(pid)+"\n"), 0o644)
	return nil
}

// writeHostKubeconfig is the admin kubeconfig with the server at the
// host's forwarder (the API server's certificate names 127.0.0.1).
func (p *Plan) writeHostKubeconfig(port int) error {
	cfg, err := clientcmd.LoadFromFile(p.cluster().Kubeconfig(k8s.Admin))
	if err != nil {
		return err
	}
	for _, c := range cfg.Clusters {
		c.Server = "https://127.0.0.1:" + strconv.Itoa(port)
	}
	return clientcmd.WriteToFile(*cfg, p.KubeconfigFile())
}

// RunCloud is `kdive lab cloud NAME`: the load balancer controller and,
// when apiListener is not nil, the API forwarder, until ctx ends.
func RunCloud(ctx context.Context, name string, apiListener net.Listener, log *slog.Logger) error {
	s, err := Load(name)
	if err != nil {
		return err
	}
	p := s.Plan
	if p.Kubernetes == nil {
		return fmt.Errorf("lab %s is not a Kubernetes lab", name)
	}
	cs, err := clientFor(nil, p.cluster().Kubeconfig(k8s.Admin))
	if err != nil {
		return err
	}
	if apiListener != nil {
		go forward(ctx, apiListener, net.JoinHostPort(p.Kubernetes.ControlPlane.IP.String(), strconv.Itoa(k8s.APIServerPort)), log)
	}
	return p.runLoadBalancers(ctx, cs, log)
}

// forward carries each connection accepted on ln to target.
func forward(ctx context.Context, ln net.Listener, target string, log *slog.Logger) {
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				log.Error("API forwarder stopped", "err", err)
			}
			return
		}
		go func() {
			defer c.Close()
			var d net.Dialer
			up, err := d.DialContext(ctx, "tcp", target)
			if err != nil {
				log.Warn("API forwarder", "err", err)
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
			<-done
		}()
	}
}

// runLoadBalancers keeps LoadBalancer Services' ingress IPs and the
// router's forwarding in step with the API, on every change of a Service
// or an EndpointSlice (a Local service follows its ready endpoints).
func (p *Plan) runLoadBalancers(ctx context.Context, cs kubernetes.Interface, log *slog.Logger) error {
	f := informers.NewSharedInformerFactory(cs, 0)
	svcs := f.Core().V1().Services()
	epSlices := f.Discovery().V1().EndpointSlices()
	kick := make(chan struct{}, 1)
	notify := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { trigger(kick) },
		UpdateFunc: func(any, any) { trigger(kick) },
		DeleteFunc: func(any) { trigger(kick) },
	}
	if _, err := svcs.Informer().AddEventHandler(notify); err != nil {
		return err
	}
	if _, err := epSlices.Informer().AddEventHandler(notify); err != nil {
		return err
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	f.WaitForCacheSync(ctx.Done())
	trigger(kick)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		}
		if err := p.syncLoadBalancers(ctx, cs, svcs.Lister(), epSlices.Lister()); err != nil {
			log.Error("load balancers", "err", err)
			time.AfterFunc(time.Second, func() { trigger(kick) })
		}
	}
}

func trigger(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// lbCleanupFinalizer is the finalizer a cloud's service controller puts on
// a LoadBalancer Service until it has released the Service's load
// balancer (k8s.io/cloud-provider's LoadBalancerCleanupFinalizer).
const lbCleanupFinalizer = "service.kubernetes.io/load-balancer-cleanup"

// syncLoadBalancers does what a cloud's service controller does, then
// points the router at the nodes for every load balancer.
func (p *Plan) syncLoadBalancers(ctx context.Context, cs kubernetes.Interface, svcs corelisters.ServiceLister, epSlices discoverylisters.EndpointSliceLister) error {
	all, err := svcs.List(labels.Everything())
	if err != nil {
		return err
	}
	snap := &labstore.Snapshot{}
	var errs []error
	snap.Services, errs = reconcileLoadBalancers(ctx, cs, p.LoadBalancerCIDR, all)
	sl, err := epSlices.List(labels.Everything())
	if err != nil {
		return err
	}
	for _, e := range sl {
		snap.EndpointSlices = append(snap.EndpointSlices, *e)
	}
	if err := p.syncRouter(ctx, snap); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// reconcileLoadBalancers does what a cloud's service controller does for
// every Service: a LoadBalancer Service gets the cleanup finalizer, then
// the lowest free address of pool as its ingress IP; a Service that is no
// longer one (another type, or being deleted) has its ingress IP released
// (status cleared) and then its finalizer removed. It returns the
// Services as they are now, with an ingress IP only on LoadBalancer ones.
func reconcileLoadBalancers(ctx context.Context, cs kubernetes.Interface, pool netip.Prefix, all []*corev1.Service) ([]corev1.Service, []error) {
	used := map[netip.Addr]bool{}
	for _, s := range all {
		for _, ing := range s.Status.LoadBalancer.Ingress {
			if a, err := netip.ParseAddr(ing.IP); err == nil {
				used[a] = true
			}
		}
	}
	var errs []error
	var out []corev1.Service
	for _, s := range all {
		svc, err := reconcileLoadBalancer(ctx, cs, pool, used, s.DeepCopy())
		if err != nil {
			errs = append(errs, fmt.Errorf("Service %s: %w", ServiceName(s), err))
		}
		if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.DeletionTimestamp != nil {
			svc.Status.LoadBalancer.Ingress = nil
		}
		out = append(out, *svc)
	}
	return out, errs
}

// reconcileLoadBalancer is reconcileLoadBalancers for one Service; it
// returns the Service as far as it got.
func reconcileLoadBalancer(ctx context.Context, cs kubernetes.Interface, pool netip.Prefix, used map[netip.Addr]bool, svc *corev1.Service) (*corev1.Service, error) {
	api := cs.CoreV1().Services(svc.Namespace)
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer && svc.DeletionTimestamp == nil {
		if !slices.Contains(svc.Finalizers, lbCleanupFinalizer) {
			next := svc.DeepCopy()
			next.Finalizers = append(next.Finalizers, lbCleanupFinalizer)
			updated, err := api.Update(ctx, next, metav1.UpdateOptions{})
			if err != nil {
				return svc, fmt.Errorf("add finalizer %s: %w", lbCleanupFinalizer, err)
			}
			svc = updated
		}
		if len(svc.Status.LoadBalancer.Ingress) > 0 {
			return svc, nil
		}
		a, ok := nextLBIP(pool, used)
		if !ok {
			return svc, fmt.Errorf("the load balancer pool %s is full", pool)
		}
		next := svc.DeepCopy()
		next.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: a.String(), IPMode: ptrTo(corev1.LoadBalancerIPModeVIP)}}
		updated, err := api.UpdateStatus(ctx, next, metav1.UpdateOptions{})
		if err != nil {
			return svc, err
		}
		used[a] = true
		return updated, nil
	}
	if len(svc.Status.LoadBalancer.Ingress) > 0 {
		next := svc.DeepCopy()
		next.Status.LoadBalancer = corev1.LoadBalancerStatus{}
		updated, err := api.UpdateStatus(ctx, next, metav1.UpdateOptions{})
		if err != nil {
			return svc, fmt.Errorf("release the load balancer: %w", err)
		}
		svc = updated
	}
	if slices.Contains(svc.Finalizers, lbCleanupFinalizer) {
		next := svc.DeepCopy()
		next.Finalizers = slices.DeleteFunc(next.Finalizers, func(f string) bool { return f == lbCleanupFinalizer })
		updated, err := api.Update(ctx, next, metav1.UpdateOptions{})
		if err != nil {
			return svc, fmt.Errorf("remove finalizer %s: %w", lbCleanupFinalizer, err)
		}
		svc = updated
	}
	return svc, nil
}

func ptrTo[T any](v T) *T { return &v }
