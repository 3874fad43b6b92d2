package localcluster

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"kube-haproxy.io/kube-haproxy/internal/kit/netns"
)

// Every pod serves the same ports; their names are what a Service's named
// targetPort refers to. Port "proxy" answers only after a PROXY protocol
// header; port "grpc" serves gRPC. Every HTTP port also speaks h2c.
var PodPorts = map[string]struct {
	Port     int32
	Protocol v1.Protocol
}{
	"http":  {8080, v1.ProtocolTCP},
	"alt":   {8081, v1.ProtocolTCP},
	"proxy": {8443, v1.ProtocolTCP},
	"grpc":  {9090, v1.ProtocolTCP},
	"echo":  {8053, v1.ProtocolUDP},
}

// ManagedBy is the endpointslice.kubernetes.io/managed-by value of the
// slices the Cluster writes.
const ManagedBy = "localcluster.kube-haproxy.io"

// Pod is a pod the Cluster started: a namespace on a node's bridge.
type Pod struct {
	Name   string
	Node   *Node
	IP     netip.Addr
	Labels map[string]string
	NS     *netns.Pod

	ready, terminating bool
}

// endpointController writes one EndpointSlice per Service with a selector,
// listing the pods (of this Cluster) the selector matches: the job of
// kube-controller-manager's EndpointSlice controller and the kubelet's
// readiness, reduced to what the cluster's pods need.
type endpointController struct {
	c       *Cluster
	mu      sync.Mutex
	pods    map[string]*Pod
	trigger chan struct{}
	done    chan struct{}
	stopped chan struct{}
	once    sync.Once
	// synced is closed after the first full reconcile.
	informerStop chan struct{}
}

func newEndpointController(c *Cluster) *endpointController {
	e := &endpointController{
		c: c, pods: map[string]*Pod{},
		trigger: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{}),
		informerStop: make(chan struct{}),
	}
	factory := informers.NewSharedInformerFactory(c.Client, 0)
	inf := factory.Core().V1().Services().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { e.kick() },
		UpdateFunc: func(any, any) { e.kick() },
		DeleteFunc: func(any) { e.kick() },
	})
	factory.Start(e.informerStop)
	go e.run()
	return e
}

func (e *endpointController) kick() {
	select {
	case e.trigger <- struct{}{}:
	default:
	}
}

func (e *endpointController) stop() {
	e.once.Do(func() {
		close(e.informerStop)
		close(e.done)
		<-e.stopped
	})
}

func (e *endpointController) run() {
	defer close(e.stopped)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-e.done:
			return
		case <-e.trigger:
		case <-tick.C:
		}
		if err := e.reconcile(context.Background()); err != nil {
			e.c.logf("endpoint controller: %v", err)
			// Try again soon: the apiserver may have been busy.
			time.AfterFunc(time.Second, e.kick)
		}
	}
}

// Sync writes the EndpointSlices now and returns once they are written.
func (c *Cluster) Sync(ctx context.Context) error { return c.eps.reconcile(ctx) }

func (e *endpointController) reconcile(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	svcs, err := e.c.Client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing Services: %w", err)
	}
	slices, err := e.c.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		LabelSelector: discovery.LabelManagedBy + "=" + ManagedBy,
	})
	if err != nil {
		return fmt.Errorf("listing EndpointSlices: %w", err)
	}
	existing := map[string]*discovery.EndpointSlice{}
	for i := range slices.Items {
		s := &slices.Items[i]
		existing[s.Namespace+"/"+s.Name] = s
	}
	for i := range svcs.Items {
		svc := &svcs.Items[i]
		if svc.Spec.Selector == nil || svc.Spec.Type == v1.ServiceTypeExternalName {
			continue
		}
		want := e.desiredSlice(svc)
		key := want.Namespace + "/" + want.Name
		have := existing[key]
		delete(existing, key)
		switch {
		case have == nil:
			if _, err := e.c.Client.DiscoveryV1().EndpointSlices(want.Namespace).Create(ctx, want, metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("creating EndpointSlice %s: %w", key, err)
			}
		case !reflect.DeepEqual(have.Endpoints, want.Endpoints) || !reflect.DeepEqual(have.Ports, want.Ports) || !reflect.DeepEqual(have.Labels, want.Labels):
			have.Endpoints, have.Ports, have.Labels = want.Endpoints, want.Ports, want.Labels
			if _, err := e.c.Client.DiscoveryV1().EndpointSlices(want.Namespace).Update(ctx, have, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("updating EndpointSlice %s: %w", key, err)
			}
		}
	}
	// Slices whose Service is gone (no garbage collector runs here).
	for key, s := range existing {
		err := e.c.Client.DiscoveryV1().EndpointSlices(s.Namespace).Delete(ctx, s.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting EndpointSlice %s: %w", key, err)
		}
	}
	return nil
}

// desiredSlice lists the pods svc selects, in name order. Like the real
// controller, a terminating pod stays listed (serving, not ready) until it
// is gone, and a headless Service's slice carries the headless label that
// kube-proxy filters on.
func (e *endpointController) desiredSlice(svc *v1.Service) *discovery.EndpointSlice {
	lbls := map[string]string{
		discovery.LabelServiceName: svc.Name,
		discovery.LabelManagedBy:   ManagedBy,
	}
	if svc.Spec.ClusterIP == v1.ClusterIPNone {
		lbls[v1.IsHeadlessService] = ""
	}
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace, Name: svc.Name + "-local", Labels: lbls,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID,
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
			}},
		},
		AddressType: discovery.AddressTypeIPv4,
		Endpoints:   []discovery.Endpoint{},
	}
	for _, sp := range svc.Spec.Ports {
		port, ok := resolveTargetPort(sp)
		if !ok {
			continue
		}
		s.Ports = append(s.Ports, discovery.EndpointPort{
			Name: ptr.To(sp.Name), Protocol: ptr.To(sp.Protocol), Port: ptr.To(port),
		})
	}
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	var names []string
	for name, p := range e.pods {
		if p.Node != nil && sel.Matches(labels.Set(p.Labels)) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		p := e.pods[name]
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses: []string{p.IP.String()},
			Conditions: discovery.EndpointConditions{
				Ready:       ptr.To(p.ready && !p.terminating),
				Serving:     ptr.To(p.ready),
				Terminating: ptr.To(p.terminating),
			},
			NodeName:  ptr.To(p.Node.Name),
			TargetRef: &v1.ObjectReference{Kind: "Pod", Namespace: svc.Namespace, Name: p.Name},
		})
	}
	if s.Ports == nil {
		s.Ports = []discovery.EndpointPort{}
	}
	return s
}

// resolveTargetPort maps a Service port's targetPort to the pods' port:
// a number as is, a name through PodPorts.
func resolveTargetPort(sp v1.ServicePort) (int32, bool) {
	switch {
	case sp.TargetPort.Type == intstr.String:
		p, ok := PodPorts[sp.TargetPort.StrVal]
		if !ok || p.Protocol != sp.Protocol {
			return 0, false
		}
		return p.Port, true
	case sp.TargetPort.IntVal != 0:
		return sp.TargetPort.IntVal, true
	default:
		return sp.Port, true
	}
}

// AddPod starts a ready pod on node with labels, and lists it in the
// EndpointSlices of the Services that select it.
func (c *Cluster) AddPod(ctx context.Context, node *Node, name string, lbls map[string]string) (*Pod, error) {
	p, err := c.StartPod(node, name, lbls)
	if err != nil {
		return nil, err
	}
	return p, c.SetReady(ctx, p, true)
}

// StartPod starts a pod that is not ready yet: no Service lists it.
func (c *Cluster) StartPod(node *Node, name string, lbls map[string]string) (*Pod, error) {
	e := c.eps
	e.mu.Lock()
	if _, dup := e.pods[name]; dup {
		e.mu.Unlock()
		return nil, fmt.Errorf("pod %s exists", name)
	}
	host := node.nextHost
	node.nextHost++
	e.mu.Unlock()
	if host > 250 {
		return nil, fmt.Errorf("node %s has no pod address left", node.Name)
	}
	b := node.PodCIDR.Addr().As4()
	ip := netip.AddrFrom4([4]byte{b[0], b[1], b[2], byte(host)})
	np := c.Kit.Pod(name, netns.PodSpec{
		BridgeNS:      node.NS,
		Bridge:        "cbr0",
		Addr:          netip.PrefixFrom(ip, node.PodCIDR.Bits()),
		Gateway:       node.PodGateway(),
		TCPPorts:      []int{int(PodPorts["http"].Port), int(PodPorts["alt"].Port)},
		UDPPorts:      []int{int(PodPorts["echo"].Port)},
		ProxyTCPPorts: []int{int(PodPorts["proxy"].Port)},
		GRPCPorts:     []int{int(PodPorts["grpc"].Port)},
	})
	p := &Pod{Name: name, Node: node, IP: ip, Labels: lbls, NS: np}
	e.mu.Lock()
	e.pods[name] = p
	e.mu.Unlock()
	return p, nil
}

// SetReady changes a pod's readiness and writes the slices.
func (c *Cluster) SetReady(ctx context.Context, p *Pod, ready bool) error {
	c.eps.mu.Lock()
	p.ready = ready
	c.eps.mu.Unlock()
	return c.Sync(ctx)
}

// SetTerminating marks a pod terminating (still serving) and writes the
// slices, as the kubelet and the controller do during a grace period.
func (c *Cluster) SetTerminating(ctx context.Context, p *Pod) error {
	c.eps.mu.Lock()
	p.terminating = true
	c.eps.mu.Unlock()
	return c.Sync(ctx)
}

// DeletePod removes a pod: terminating for grace (its server still
// answers), then gone from the slices, then stopped (StopPod).
func (c *Cluster) DeletePod(ctx context.Context, p *Pod, grace time.Duration) error {
	if grace > 0 {
		if err := c.SetTerminating(ctx, p); err != nil {
			return err
		}
		time.Sleep(grace)
	}
	if err := c.Unlist(ctx, p); err != nil {
		return err
	}
	c.StopPod(p)
	return nil
}

// Unlist removes a pod from the slices, leaving its server running (a pod
// whose endpoint is gone while it still answers, so a client reaching it
// shows the proxy still sends there).
func (c *Cluster) Unlist(ctx context.Context, p *Pod) error {
	c.eps.mu.Lock()
	delete(c.eps.pods, p.Name)
	c.eps.mu.Unlock()
	return c.Sync(ctx)
}

// StopPod stops a pod's server and takes its link down. Its namespace
// stays until the Cluster stops, and its address is never reused.
func (c *Cluster) StopPod(p *Pod) {
	p.NS.Proc.Stop()
	_, _ = p.NS.Exec("ip", "link", "set", "eth0", "down")
}

// Pods returns the running pods, by name.
func (c *Cluster) Pods() []*Pod {
	c.eps.mu.Lock()
	defer c.eps.mu.Unlock()
	out := make([]*Pod, 0, len(c.eps.pods))
	for _, p := range c.eps.pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
