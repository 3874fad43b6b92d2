// Command lb-controller assigns LoadBalancer ingress IPs for the central
// and external HAProxy (kube-proxy's haproxy mode in scopes cluster and
// external): see package lbcontroller and docs/scopes.md. Two or more
// replicas may run, one on each load-balancer host: a Lease elects the one
// that assigns.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"kube-haproxy.io/kube-haproxy/lbcontroller"
)

// DefaultClass is the proxier's default loadBalancerClass.
const DefaultClass = "kube-haproxy.io/haproxy"

type options struct {
	kubeconfig     string
	class          string
	pools          string
	serveUnclassed bool
	leaderElect    bool
	leaseNamespace string
	leaseName      string
	identity       string
}

func main() {
	klog.InitFlags(nil)
	var o options
	host, _ := os.Hostname()
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; empty: the in-cluster configuration")
	flag.StringVar(&o.class, "load-balancer-class", DefaultClass, "spec.loadBalancerClass of the Services served (kube-proxy's haproxy.loadBalancerClass)")
	flag.StringVar(&o.pools, "pools", "", "comma-separated CIDRs ingress IPs are taken from, of either IP family (required)")
	flag.BoolVar(&o.serveUnclassed, "serve-without-class", false, "also serve LoadBalancer Services without spec.loadBalancerClass (scope cluster, where no other load-balancer controller runs)")
	flag.BoolVar(&o.leaderElect, "leader-elect", true, "elect one assigning replica through a Lease")
	flag.StringVar(&o.leaseNamespace, "leader-elect-namespace", "kube-system", "namespace of the Lease")
	flag.StringVar(&o.leaseName, "leader-elect-name", "kube-haproxy-lb-controller", "name of the Lease")
	flag.StringVar(&o.identity, "leader-elect-identity", host, "this replica's name in the Lease")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "lb-controller:", err)
		os.Exit(1)
	}
}

func parsePools(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("--pools: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}

func run(o options) error {
	pools, err := parsePools(o.pools)
	if err != nil {
		return err
	}
	cfg := lbcontroller.Config{Class: o.class, ServeUnclassed: o.serveUnclassed, Pools: pools}
	if err := cfg.Validate(); err != nil {
		return err
	}
	var restConfig *rest.Config
	if o.kubeconfig != "" {
		restConfig, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	} else {
		restConfig, err = rest.InClusterConfig()
	}
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "kube-haproxy-lb-controller"})

	assign := func(ctx context.Context) error {
		factory := informers.NewSharedInformerFactory(client, 0)
		c, err := lbcontroller.New(ctx, cfg, client, factory.Core().V1().Services(), recorder)
		if err != nil {
			return err
		}
		factory.Start(ctx.Done())
		defer factory.Shutdown()
		return c.Run(ctx)
	}
	if !o.leaderElect {
		return assign(ctx)
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, o.leaseNamespace, o.leaseName,
		client.CoreV1(), client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: o.identity, EventRecorder: recorder})
	if err != nil {
		return err
	}
	errs := make(chan error, 1)
	electCtx, endElection := context.WithCancel(ctx)
	defer endElection()
	leaderelection.RunOrDie(electCtx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		ReleaseOnCancel: true,
		Name:            o.leaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				errs <- assign(ctx)
				// Assigning ended while the Lease is held: give it up so
				// that another replica takes over, and exit.
				endElection()
			},
			// A replica that lost the Lease must not go on assigning:
			// exit, and let the supervisor start it again as a follower.
			OnStoppedLeading: func() { klog.Info("Leadership lost") },
		},
	})
	if ctx.Err() != nil {
		return nil // stopped by a signal
	}
	select {
	case err := <-errs:
		if err == nil {
			err = errors.New("assigning ingress IPs ended")
		}
		return err
	default:
		return fmt.Errorf("lost the Lease %s/%s", o.leaseNamespace, o.leaseName)
	}
}
