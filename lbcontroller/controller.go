// Package lbcontroller is the load-balancer controller of the central and
// external HAProxy (scopes cluster and external): it gives each
// LoadBalancer Service of its class one ingress IP per IP family from a
// configured pool, writes it to status.loadBalancer.ingress, and takes it
// back when the Service is deleted or leaves the class. The proxier then
// serves those ingress IPs like any other LoadBalancer IP.
//
// One worker owns the table of assigned addresses, rebuilt from the
// Services' status when the controller starts, so a restart (or a
// failover to the other load-balancer host) reassigns nothing.
package lbcontroller

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// Event reasons, on the Service.
const (
	// ReasonAssigned: an ingress IP was given to the Service.
	ReasonAssigned = "IngressIPAssigned"
	// ReasonReleased: the Service's ingress IPs were taken back.
	ReasonReleased = "IngressIPReleased"
	// ReasonPoolExhausted: no free address of the family is left.
	ReasonPoolExhausted = "IngressIPPoolExhausted"
	// ReasonNoPool: no pool of one of the Service's IP families.
	ReasonNoPool = "IngressIPNoPool"
	// ReasonRequestRefused: spec.loadBalancerIP is outside the pools or
	// held by another Service.
	ReasonRequestRefused = "IngressIPRequestRefused"
)

// Config says which Services are this controller's and where their
// addresses come from.
type Config struct {
	// Class is the spec.loadBalancerClass served.
	Class string
	// ServeUnclassed also serves LoadBalancer Services without a class:
	// in scope cluster this controller is the cluster's only one.
	ServeUnclassed bool
	// Pools are the ranges ingress IPs are taken from, of either family.
	Pools []netip.Prefix
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if c.Class == "" {
		return fmt.Errorf("class: empty")
	}
	if len(c.Pools) == 0 {
		return fmt.Errorf("pools: none")
	}
	for i, p := range c.Pools {
		if !p.IsValid() || p.Addr().Zone() != "" {
			return fmt.Errorf("pools: %q is not a CIDR", p)
		}
		for _, q := range c.Pools[:i] {
			if p.Overlaps(q) {
				return fmt.Errorf("pools: %s overlaps %s", p, q)
			}
		}
	}
	return nil
}

// Controller assigns and releases ingress IPs. Build it with New and run
// it with Run.
type Controller struct {
	cfg      Config
	client   kubernetes.Interface
	lister   corelisters.ServiceLister
	synced   cache.InformerSynced
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder
	logger   klog.Logger

	// assigned is who holds each address of the pools, and waiting the
	// Services that found a pool exhausted (tried again when an address
	// is freed); only the worker touches them.
	assigned map[netip.Addr]string
	waiting  map[string]bool
}

// New builds a Controller over a Service informer.
func New(ctx context.Context, cfg Config, client kubernetes.Interface, services coreinformers.ServiceInformer, recorder record.EventRecorder) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("load-balancer controller: %w", err)
	}
	for i, p := range cfg.Pools {
		cfg.Pools[i] = p.Masked()
	}
	c := &Controller{
		cfg:      cfg,
		client:   client,
		lister:   services.Lister(),
		synced:   services.Informer().HasSynced,
		queue:    workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](), workqueue.TypedRateLimitingQueueConfig[string]{Name: "lb-ingress-ips"}),
		recorder: recorder,
		logger:   klog.FromContext(ctx).WithName("lb-ingress-ips"),
		assigned: map[netip.Addr]string{},
		waiting:  map[string]bool{},
	}
	enqueue := func(obj any) {
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			utilruntime.HandleError(err)
			return
		}
		c.queue.Add(key)
	}
	_, err := services.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Run waits for the informer, takes over the addresses the Services
// already hold, and assigns until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced) {
		return fmt.Errorf("load-balancer controller: Service cache did not sync")
	}
	if err := c.adopt(); err != nil {
		return err
	}
	c.logger.Info("Assigning LoadBalancer ingress IPs", "class", c.cfg.Class, "pools", c.cfg.Pools, "alsoWithoutClass", c.cfg.ServeUnclassed, "adopted", len(c.assigned))
	go wait.UntilWithContext(ctx, c.work, time.Second)
	<-ctx.Done()
	return nil
}

// adopt records the pool addresses that Services of the class hold in
// their status, oldest Service first: when two claim one address, the
// older keeps it and the other is given a new one.
func (c *Controller) adopt() error {
	all, err := c.lister.List(labels.Everything())
	if err != nil {
		return err
	}
	slices.SortFunc(all, func(a, b *v1.Service) int {
		if d := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); d != 0 {
			return d
		}
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	for _, svc := range all {
		if !c.ours(svc) {
			continue
		}
		key := svc.Namespace + "/" + svc.Name
		for _, a := range c.ingressInPools(svc) {
			if _, taken := c.assigned[a]; !taken {
				c.assigned[a] = key
			}
		}
	}
	return nil
}

func (c *Controller) work(ctx context.Context) {
	for c.next(ctx) {
	}
}

func (c *Controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	if err := c.sync(ctx, key); err != nil {
		c.logger.Error(err, "Assigning ingress IPs failed, retrying", "service", key)
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}

// ours reports whether svc is a LoadBalancer Service this controller serves.
func (c *Controller) ours(svc *v1.Service) bool {
	if svc.Spec.Type != v1.ServiceTypeLoadBalancer {
		return false
	}
	if svc.Spec.LoadBalancerClass == nil {
		return c.cfg.ServeUnclassed
	}
	return *svc.Spec.LoadBalancerClass == c.cfg.Class
}

// inPools reports whether a lies in one of the pools.
func (c *Controller) inPools(a netip.Addr) bool {
	return slices.ContainsFunc(c.cfg.Pools, func(p netip.Prefix) bool { return p.Contains(a) })
}

// ingressInPools are the pool addresses among svc's ingress IPs.
func (c *Controller) ingressInPools(svc *v1.Service) []netip.Addr {
	var out []netip.Addr
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if a, err := netip.ParseAddr(in.IP); err == nil && c.inPools(a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// sync brings one Service's ingress IPs in line: assigned while it is ours,
// released otherwise.
func (c *Controller) sync(ctx context.Context, key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	svc, err := c.lister.Services(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		c.release(key)
		return nil
	}
	if err != nil {
		return err
	}
	if !c.ours(svc) {
		held := c.release(key)
		if len(c.ingressInPools(svc)) == 0 {
			return nil
		}
		// It left the class or type LoadBalancer: the addresses are no
		// longer served, so the status must not promise them. A
		// LoadBalancer of another class whose status we never wrote is
		// that class's controller's business, even with addresses in
		// our pools.
		if svc.Spec.Type == v1.ServiceTypeLoadBalancer && !held {
			return nil
		}
		return c.writeIngress(ctx, svc, nil, ReasonReleased, "ingress IPs released: the Service is no longer of type LoadBalancer with class "+c.cfg.Class)
	}

	want, problems := c.assign(svc, key)
	for _, p := range problems {
		c.recorder.Event(svc, v1.EventTypeWarning, p.reason, p.message)
	}
	if slices.Equal(want, c.ingressInPools(svc)) {
		return nil
	}
	var msg []string
	for _, a := range want {
		msg = append(msg, a.String())
	}
	return c.writeIngress(ctx, svc, want, ReasonAssigned, "ingress IPs: "+strings.Join(msg, ", "))
}

type problem struct{ reason, message string }

// assign returns the ingress IPs svc should have, one per IP family it
// asks for, keeping what it holds; addresses it no longer needs are freed.
func (c *Controller) assign(svc *v1.Service, key string) ([]netip.Addr, []problem) {
	var problems []problem
	held := map[bool]netip.Addr{} // by "is IPv4"
	// What the table gives svc first: the cache may not show the status
	// this controller just wrote.
	for a, owner := range c.assigned {
		if owner == key && c.wantsFamily(svc, a.Is4()) {
			if old, dup := held[a.Is4()]; !dup || a.Less(old) {
				held[a.Is4()] = a
			}
		}
	}
	for _, a := range c.ingressInPools(svc) {
		if owner, taken := c.assigned[a]; taken && owner != key {
			continue // another Service's, since before this one claimed it
		}
		if _, dup := held[a.Is4()]; !dup && c.wantsFamily(svc, a.Is4()) {
			held[a.Is4()] = a
		}
	}
	requested, requestOK := netip.Addr{}, false
	if svc.Spec.LoadBalancerIP != "" {
		if a, err := netip.ParseAddr(svc.Spec.LoadBalancerIP); err == nil {
			requested, requestOK = a.Unmap(), true
		}
		switch {
		case !requestOK:
			problems = append(problems, problem{ReasonRequestRefused, fmt.Sprintf("spec.loadBalancerIP %q is not an IP address", svc.Spec.LoadBalancerIP)})
		case !c.inPools(requested):
			problems = append(problems, problem{ReasonRequestRefused, fmt.Sprintf("spec.loadBalancerIP %s is in none of the pools %v", requested, c.cfg.Pools)})
			requestOK = false
		case c.assigned[requested] != "" && c.assigned[requested] != key:
			problems = append(problems, problem{ReasonRequestRefused, fmt.Sprintf("spec.loadBalancerIP %s is held by Service %s", requested, c.assigned[requested])})
			requestOK = false
		}
	}
	var want []netip.Addr
	delete(c.waiting, key)
	for _, is4 := range []bool{true, false} {
		if !c.wantsFamily(svc, is4) {
			continue
		}
		a, ok := held[is4]
		if requestOK && requested.Is4() == is4 {
			a, ok = requested, true
		}
		if !ok {
			if a, ok = c.free(is4); !ok {
				family := familyName(is4)
				if !slices.ContainsFunc(c.cfg.Pools, func(p netip.Prefix) bool { return p.Addr().Is4() == is4 }) {
					problems = append(problems, problem{ReasonNoPool, "no " + family + " pool: no " + family + " ingress IP"})
				} else {
					problems = append(problems, problem{ReasonPoolExhausted, "every " + family + " address of the pools is assigned"})
					c.waiting[key] = true
				}
				continue
			}
		}
		want = append(want, a)
	}
	// Free what svc held and no longer keeps, then claim what it keeps.
	for a, owner := range c.assigned {
		if owner == key && !slices.Contains(want, a) {
			c.free1(a)
		}
	}
	for _, a := range want {
		c.assigned[a] = key
	}
	return want, problems
}

// wantsFamily reports whether svc has a ClusterIP family is4 (IPv4 when
// is4): an ingress IP of each family the Service has.
func (c *Controller) wantsFamily(svc *v1.Service, is4 bool) bool {
	families := svc.Spec.IPFamilies
	if len(families) == 0 {
		// Before the API server defaulted it (or a headless Service):
		// take the ClusterIP's family, else IPv4.
		if a, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil && a.Is6() {
			families = []v1.IPFamily{v1.IPv6Protocol}
		} else {
			families = []v1.IPFamily{v1.IPv4Protocol}
		}
	}
	return slices.Contains(families, v1.IPv4Protocol) && is4 || slices.Contains(families, v1.IPv6Protocol) && !is4
}

// free returns the lowest unassigned address of the family's pools. An
// IPv4 pool's network and broadcast addresses, and an IPv6 pool's first
// address (the subnet-router anycast address), are never given out.
func (c *Controller) free(is4 bool) (netip.Addr, bool) {
	for _, p := range c.cfg.Pools {
		if p.Addr().Is4() != is4 {
			continue
		}
		first, last := p.Addr(), lastAddr(p)
		if is4 && p.Bits() < 31 {
			first, last = first.Next(), last.Prev()
		}
		if !is4 && p.Bits() < 127 {
			first = first.Next()
		}
		for a := first; a.IsValid() && a.Compare(last) <= 0; a = a.Next() {
			if _, taken := c.assigned[a]; !taken {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// release frees every address key holds, and reports whether it held any.
func (c *Controller) release(key string) bool {
	delete(c.waiting, key)
	held := false
	for a, owner := range c.assigned {
		if owner == key {
			held = true
			c.free1(a)
			c.logger.V(2).Info("Released ingress IP", "service", key, "ip", a)
		}
	}
	return held
}

// free1 frees one address, and has the Services waiting for one tried
// again.
func (c *Controller) free1(a netip.Addr) {
	delete(c.assigned, a)
	for key := range c.waiting {
		c.queue.Add(key)
	}
}

// writeIngress replaces svc's ingress IPs from the pools by want, keeping
// any others (another controller's), and records an event.
func (c *Controller) writeIngress(ctx context.Context, svc *v1.Service, want []netip.Addr, reason, message string) error {
	updated := svc.DeepCopy()
	var ingress []v1.LoadBalancerIngress
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if a, err := netip.ParseAddr(in.IP); err == nil && c.inPools(a.Unmap()) {
			continue
		}
		ingress = append(ingress, in)
	}
	vip := v1.LoadBalancerIPModeVIP
	for _, a := range want {
		ingress = append(ingress, v1.LoadBalancerIngress{IP: a.String(), IPMode: &vip})
	}
	updated.Status.LoadBalancer.Ingress = ingress
	_, err := c.client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("writing the status of Service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	c.recorder.Event(svc, v1.EventTypeNormal, reason, message)
	c.logger.Info("Wrote ingress IPs", "service", types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, "ips", want)
	return nil
}

func familyName(is4 bool) string {
	if is4 {
		return "IPv4"
	}
	return "IPv6"
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
