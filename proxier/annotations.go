package proxier

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/kubernetes/pkg/proxy"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
	"kube-haproxy.io/kube-haproxy/proxier/translate"
)

// Service annotations read in haproxy mode. Each applies to every TCP
// port of the Service. An invalid value never breaks the Service: its
// ports are served without what the annotation asks for, with a Warning
// event and a count in kubeproxy_haproxy_invalid_annotation_service_ports.
const (
	// AnnotationProxyProtocol asks HAProxy to open every connection to the
	// Service's endpoints with a PROXY protocol header, which carries the
	// client's address: "v1" (the text header) or "v2" (the binary one).
	AnnotationProxyProtocol = "haproxy.kube-haproxy.io/proxy-protocol"
	// AnnotationHealthCheck "tcp" has HAProxy check each endpoint with a
	// TCP connect; an endpoint that fails its checks leaves the Service
	// until it passes them again, without any API change.
	AnnotationHealthCheck = "haproxy.kube-haproxy.io/health-check"
	// AnnotationHealthCheckInterval is the time between two checks and the
	// timeout of one (a Go duration, 100ms to 1h; default 500ms).
	AnnotationHealthCheckInterval = "haproxy.kube-haproxy.io/health-check-interval"
	// AnnotationHealthCheckRise is how many checks in a row must pass to
	// bring an endpoint back (1 to 100; default 2).
	AnnotationHealthCheckRise = "haproxy.kube-haproxy.io/health-check-rise"
	// AnnotationHealthCheckFall is how many checks in a row must fail to
	// take an endpoint out (1 to 100; default 2).
	AnnotationHealthCheckFall = "haproxy.kube-haproxy.io/health-check-fall"
)

// DefaultEndpointCheck is the check of AnnotationHealthCheck without the
// other annotations: an endpoint that stops answering is out after one to
// two seconds (two checks of 500ms), and back about a second after it
// answers again.
var DefaultEndpointCheck = haproxycfg.EndpointCheck{Interval: 500 * time.Millisecond, Rise: 2, Fall: 2}

// servicePortInfo is upstream's service port with what only this proxier
// reads from the Service.
type servicePortInfo struct {
	*proxy.BaseServicePortInfo
	// loadBalancerOnly: scope external serves only the LoadBalancer
	// ingress IPs (the Service is in scope by its loadBalancerClass alone;
	// the nodes' kube-proxy serves the rest).
	loadBalancerOnly bool
	proxyProtocol    haproxycfg.ProxyProtocol
	// badProxyProtocol is the annotation's value when it names no version.
	badProxyProtocol string
	check            *haproxycfg.EndpointCheck
	// badCheck says what is wrong with the check annotations.
	badCheck string
	// appProtocol is the port's appProtocol as HAProxy handles it;
	// appProtocolNote says why a port with an appProtocol is TCP.
	appProtocol     haproxycfg.AppProtocol
	appProtocolNote string
}

func (s *servicePortInfo) LoadBalancerOnly() bool { return s.loadBalancerOnly }

func (s *servicePortInfo) ProxyProtocol() (haproxycfg.ProxyProtocol, error) {
	if s.badProxyProtocol != "" {
		return haproxycfg.NoProxyProtocol, fmt.Errorf("annotation %s=%q is not v1 or v2: the endpoints get no PROXY header", AnnotationProxyProtocol, s.badProxyProtocol)
	}
	return s.proxyProtocol, nil
}

func (s *servicePortInfo) EndpointCheck() (*haproxycfg.EndpointCheck, error) {
	if s.badCheck != "" {
		return nil, fmt.Errorf("%s: the endpoints are not checked", s.badCheck)
	}
	return s.check, nil
}

func (s *servicePortInfo) AppProtocol() (haproxycfg.AppProtocol, string) {
	return s.appProtocol, s.appProtocolNote
}

var (
	_ translate.AppProtocolPort   = &servicePortInfo{}
	_ translate.LoadBalancerOnly  = &servicePortInfo{}
	_ translate.ProxyProtocolPort = &servicePortInfo{}
	_ translate.EndpointCheckPort = &servicePortInfo{}
)

// makeServiceInfo adds to upstream's service port what the translation
// reads from the Service beside it.
func makeServiceInfo(cfg Config) func(*v1.ServicePort, *v1.Service, *proxy.BaseServicePortInfo) proxy.ServicePort {
	return func(port *v1.ServicePort, svc *v1.Service, base *proxy.BaseServicePortInfo) proxy.ServicePort {
		info := &servicePortInfo{BaseServicePortInfo: base}
		info.appProtocol, info.appProtocolNote = parseAppProtocol(port.AppProtocol)
		info.loadBalancerOnly = cfg.Scope == ScopeExternal && svc.Labels[LabelServiceProxyName] != cfg.ServiceProxyName
		if v, ok := svc.Annotations[AnnotationProxyProtocol]; ok {
			switch strings.ToLower(strings.TrimSpace(v)) {
			case "v1":
				info.proxyProtocol = haproxycfg.ProxyProtocolV1
			case "v2":
				info.proxyProtocol = haproxycfg.ProxyProtocolV2
			case "", "none":
			default:
				info.badProxyProtocol = v
			}
		}
		var err error
		if info.check, err = parseEndpointCheck(svc.Annotations); err != nil {
			info.badCheck = err.Error()
		}
		return info
	}
}

// parseEndpointCheck reads the check annotations: nil when checks are off.
func parseEndpointCheck(annotations map[string]string) (*haproxycfg.EndpointCheck, error) {
	switch v := annotations[AnnotationHealthCheck]; strings.ToLower(strings.TrimSpace(v)) {
	case "", "none":
		return nil, nil
	case "tcp":
	default:
		return nil, fmt.Errorf("annotation %s=%q is not tcp", AnnotationHealthCheck, v)
	}
	check := DefaultEndpointCheck
	if v, ok := annotations[AnnotationHealthCheckInterval]; ok {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d < haproxycfg.MinCheckInterval || d > haproxycfg.MaxCheckInterval {
			return nil, fmt.Errorf("annotation %s=%q is not a duration from %v to %v", AnnotationHealthCheckInterval, v, haproxycfg.MinCheckInterval, haproxycfg.MaxCheckInterval)
		}
		// HAProxy counts in milliseconds.
		check.Interval = d.Round(time.Millisecond)
	}
	for _, c := range []struct {
		annotation string
		n          *int
	}{{AnnotationHealthCheckRise, &check.Rise}, {AnnotationHealthCheckFall, &check.Fall}} {
		v, ok := annotations[c.annotation]
		if !ok {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > haproxycfg.MaxCheckCount {
			return nil, fmt.Errorf("annotation %s=%q is not a number from 1 to %d", c.annotation, v, haproxycfg.MaxCheckCount)
		}
		*c.n = n
	}
	return &check, nil
}

// appProtocols are the appProtocol values balanced per request: the IANA
// service name "http", and the Kubernetes names for WebSocket and
// cleartext HTTP/2 (KEP-3726), with the names meshes use for HTTP/2 and
// gRPC. Values compare without case.
var appProtocols = map[string]haproxycfg.AppProtocol{
	"http":              haproxycfg.AppHTTP1,
	"kubernetes.io/ws":  haproxycfg.AppHTTP1,
	"kubernetes.io/h2c": haproxycfg.AppH2C,
	"h2c":               haproxycfg.AppH2C,
	"http2":             haproxycfg.AppH2C,
	"grpc":              haproxycfg.AppH2C,
}

// tcpAppProtocols are appProtocol values relayed as TCP without a note:
// TLS, which HAProxy passes through without terminating, and plain TCP.
var tcpAppProtocols = map[string]bool{"tcp": true, "https": true, "kubernetes.io/wss": true, "tls": true}

// parseAppProtocol says how HAProxy handles a port of appProtocol p, and
// why a port that names a protocol is relayed as TCP.
func parseAppProtocol(p *string) (haproxycfg.AppProtocol, string) {
	if p == nil || *p == "" {
		return haproxycfg.AppTCP, ""
	}
	v := strings.ToLower(*p)
	if app, ok := appProtocols[v]; ok {
		return app, ""
	}
	if tcpAppProtocols[v] {
		return haproxycfg.AppTCP, ""
	}
	return haproxycfg.AppTCP, fmt.Sprintf("appProtocol %q is not one HAProxy balances per request (http, kubernetes.io/ws, kubernetes.io/h2c, h2c, http2, grpc): its connections are relayed as TCP", *p)
}
