// Package explain is the answer to an operator's question "where does
// traffic for this Service go?", in HAProxy's terms: for each IP family
// and port of a Service, the keys of the dispatcher's services map that
// reach it, its endpoint sets, every endpoint with the reason it is or is
// not in them, what HAProxy's runtime API holds, and when the port last
// changed. The proxier fills a Service (it knows the model and HAProxy);
// this package only defines the facts, prints them and serves them over
// HTTP, so the text and the JSON say the same thing.
package explain

import "time"

// Service is the explanation of one Service.
type Service struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Families are the IP families the Service has a port in.
	Families []Family `json:"families"`
}

// Family is what one IP family's dispatcher serves of the Service.
type Family struct {
	// Family is IPv4 or IPv6.
	Family string `json:"family"`
	// Frontend is the dispatcher frontend of the family (services-ipv4),
	// ServicesMap and EndpointsMap the files of its maps.
	Frontend     string `json:"frontend"`
	ServicesMap  string `json:"servicesMap,omitempty"`
	EndpointsMap string `json:"endpointsMap,omitempty"`
	// ChecksBackend holds one server per actively checked endpoint.
	ChecksBackend string `json:"checksBackend"`
	// Runtime says whether HAProxy's runtime API answered; when it did not,
	// the InHAProxy fields below are unknown.
	Runtime RuntimeState `json:"runtime"`
	Ports   []Port       `json:"ports"`
}

// RuntimeState is whether the live state could be read.
type RuntimeState struct {
	Read  bool   `json:"read"`
	Error string `json:"error,omitempty"`
}

// Port is one Service port in one family.
type Port struct {
	// Port is the Service port's name ("" when unnamed), Number its
	// number and Protocol TCP, UDP or SCTP.
	Port     string `json:"port"`
	Number   int    `json:"number"`
	Protocol string `json:"protocol"`
	// Served: HAProxy serves the port. When not, NotServed says why (a
	// UDP port served by the nftables delegate, a skipped port).
	Served    bool   `json:"served"`
	NotServed string `json:"notServed,omitempty"`
	// Name is the port's HAProxy name, also the name of its Cluster
	// endpoint set.
	Name                  string `json:"name,omitempty"`
	InternalTrafficPolicy string `json:"internalTrafficPolicy"`
	ExternalTrafficPolicy string `json:"externalTrafficPolicy,omitempty"`
	// AffinitySeconds is the sessionAffinity ClientIP timeout; 0: none.
	AffinitySeconds int `json:"affinitySeconds,omitempty"`
	// AppProtocol is tcp, http or h2c: how HAProxy balances the port.
	AppProtocol   string `json:"appProtocol,omitempty"`
	ProxyProtocol string `json:"proxyProtocol,omitempty"`
	// Check is the active check ("tcp every 2s, rise 2, fall 3"), if any.
	Check string `json:"check,omitempty"`
	// WhenEmpty is what a client gets when its set is empty.
	WhenEmpty string `json:"whenEmpty,omitempty"`
	// Dispatch are the services map entries that reach the port.
	Dispatch []DispatchEntry `json:"dispatch"`
	// Sets are the port's endpoint sets (Cluster, Local).
	Sets      []Set      `json:"sets"`
	Endpoints []Endpoint `json:"endpoints"`
	// LastChange is when a change of this port was last applied to
	// HAProxy by this kube-proxy (zero: not since it started), and
	// Reloaded whether HAProxy reloaded while it was applied.
	LastChange *time.Time `json:"lastChange,omitempty"`
	Reloaded   bool       `json:"reloaded"`
	// Connections says what is known of current connections: the
	// dispatcher has no server per endpoint, so they are not counted per
	// endpoint.
	Connections string `json:"connections"`
}

// DispatchEntry is one key of the services map.
type DispatchEntry struct {
	// Kind is clusterIP, nodePort, loadBalancer or externalIP.
	Kind string `json:"kind"`
	Key  string `json:"key"`
	// Value is what the proxier applied; InHAProxy what HAProxy holds
	// ("" when the key is missing), Match whether they are the same.
	Value     string `json:"value"`
	InHAProxy string `json:"inHAProxy"`
	Match     Match  `json:"match"`
}

// Match compares what the proxier applied with what HAProxy holds.
type Match string

const (
	Present Match = "present"
	Missing Match = "missing"
	Differs Match = "differs"
	// Unknown: the runtime API did not answer.
	Unknown Match = "unknown"
)

// Set is one endpoint set of a port.
type Set struct {
	Name string `json:"name"`
	// Policy is Cluster or Local.
	Policy string `json:"policy"`
	// Endpoints is how many endpoints the proxier applied; InHAProxy the
	// count entry HAProxy holds (-1 when missing or unknown).
	Endpoints int   `json:"endpoints"`
	InHAProxy int   `json:"inHAProxy"`
	Match     Match `json:"match"`
}

// Endpoint is one endpoint of the port's EndpointSlices.
type Endpoint struct {
	Address string `json:"address"`
	// Local: on this node.
	Local bool `json:"local"`
	// Conditions of the EndpointSlice, as kube-proxy reads them.
	Ready       bool     `json:"ready"`
	Serving     bool     `json:"serving"`
	Terminating bool     `json:"terminating"`
	ZoneHints   []string `json:"zoneHints,omitempty"`
	NodeHints   []string `json:"nodeHints,omitempty"`
	// InSets are the policies (Cluster, Local) of the sets it is in;
	// Out the sets it is not in, each with the reason.
	InSets []string    `json:"inSets"`
	Out    []Exclusion `json:"out,omitempty"`
	// Check is the state of its active check, when the port has one.
	Check *Check `json:"check,omitempty"`
}

// Exclusion is why an endpoint is not in one set.
type Exclusion struct {
	Policy string `json:"policy"`
	Reason Reason `json:"reason"`
	Detail string `json:"detail"`
}

// Reason is a stable word for scripts; Exclusion.Detail is for people.
type Reason string

const (
	NotReady     Reason = "not-ready"
	Terminating  Reason = "terminating"
	OtherNode    Reason = "other-node"
	Topology     Reason = "topology"
	FailingCheck Reason = "failing-check"
	BadAddress   Reason = "bad-address"
	// Pending: it qualifies, and the next sync will add it.
	Pending Reason = "pending"
)

// Check is the live state of an endpoint's active check.
type Check struct {
	// Server is its server in the checks backend.
	Server string `json:"server"`
	// Status is HAProxy's (UP, DOWN, MAINT, ...), "absent" when HAProxy
	// has no such server yet; Result and Detail the last check's
	// (check_status, check_desc) when HAProxy reports them.
	Status string `json:"status"`
	Result string `json:"result,omitempty"`
	Detail string `json:"detail,omitempty"`
	// Down: the proxier leaves the endpoint out of the sets.
	Down bool `json:"down"`
}
