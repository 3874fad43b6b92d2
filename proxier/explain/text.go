package explain

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText prints s for a person: one block per family and port, the
// dispatch keys, the sets and one line per endpoint. now dates the last
// change ("12s ago").
func WriteText(w io.Writer, s *Service, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	p("Service %s/%s", s.Namespace, s.Name)
	for _, f := range s.Families {
		p("")
		runtime := "runtime API read"
		if !f.Runtime.Read {
			runtime = "runtime API not read: " + f.Runtime.Error
		}
		p("%s: frontend %s, maps %s and %s (%s)", f.Family, f.Frontend, f.ServicesMap, f.EndpointsMap, runtime)
		for _, port := range f.Ports {
			writePort(p, f, port, now)
		}
	}
	return tw.Flush()
}

func writePort(p func(string, ...any), f Family, port Port, now time.Time) {
	title := strconv.Itoa(port.Number) + "/" + port.Protocol
	if port.Port != "" {
		title = port.Port + " " + title
	}
	p("")
	if !port.Served {
		p("  port %s: not served by HAProxy: %s", title, port.NotServed)
		return
	}
	p("  port %s: %s", title, port.Name)
	policies := "internalTrafficPolicy " + port.InternalTrafficPolicy
	if port.ExternalTrafficPolicy != "" {
		policies += ", externalTrafficPolicy " + port.ExternalTrafficPolicy
	}
	if port.AffinitySeconds > 0 {
		policies += ", sessionAffinity ClientIP " + strconv.Itoa(port.AffinitySeconds) + "s"
	}
	if port.AppProtocol != "" && port.AppProtocol != "tcp" {
		policies += ", balanced per request (" + port.AppProtocol + ")"
	}
	if port.ProxyProtocol != "" {
		policies += ", PROXY protocol " + port.ProxyProtocol
	}
	if port.Check != "" {
		policies += ", active check " + port.Check
	}
	p("    %s; an empty set: %s", policies, port.WhenEmpty)
	if port.LastChange == nil {
		p("    last change: none applied since kube-proxy started")
	} else {
		reload := "without reload"
		if port.Reloaded {
			reload = "HAProxy reloaded meanwhile"
		}
		p("    last change applied %s (%s ago), %s", port.LastChange.UTC().Format(time.RFC3339), now.Sub(*port.LastChange).Round(time.Second), reload)
	}
	p("    dispatch: keys of %s", f.ServicesMap)
	p("      KIND\tKEY\tIN HAPROXY")
	for _, d := range port.Dispatch {
		p("      %s\t%s\t%s", d.Kind, d.Key, d.Match)
	}
	p("    endpoint sets: count|generation in %s, entries in %s", f.ServicesMap, f.EndpointsMap)
	p("      POLICY\tSET\tENDPOINTS\tIN HAPROXY")
	for _, s := range port.Sets {
		inHAProxy := string(s.Match)
		if s.InHAProxy >= 0 {
			inHAProxy = strconv.Itoa(s.InHAProxy) + " (" + inHAProxy + ")"
		}
		p("      %s\t%s\t%d\t%s", s.Policy, s.Name, s.Endpoints, inHAProxy)
	}
	p("    endpoints:")
	p("      ADDRESS\tNODE\tCONDITIONS\tIN SETS\tWHY NOT")
	if len(port.Endpoints) == 0 {
		p("      (none)")
	}
	for _, e := range port.Endpoints {
		node := "other"
		if e.Local {
			node = "this"
		}
		in := strings.Join(e.InSets, ", ")
		if in == "" {
			in = "-"
		}
		// One reason for several sets is said once: "Cluster, Local: not ready".
		var why []string
		var policies []string
		for i, x := range e.Out {
			policies = append(policies, x.Policy)
			if i+1 == len(e.Out) || e.Out[i+1].Detail != x.Detail {
				why = append(why, strings.Join(policies, ", ")+": "+x.Detail)
				policies = nil
			}
		}
		p("      %s\t%s\t%s\t%s\t%s", e.Address, node, conditions(e), in, strings.Join(why, "; "))
	}
	p("    connections: %s", port.Connections)
}

// conditions names an endpoint's conditions and check in a few words.
func conditions(e Endpoint) string {
	var c []string
	switch {
	case e.Ready:
		c = append(c, "ready")
	case e.Serving:
		c = append(c, "serving")
	default:
		c = append(c, "not ready")
	}
	if e.Terminating {
		c = append(c, "terminating")
	}
	if e.Check != nil {
		check := "check passing"
		switch {
		case e.Check.Down:
			check = "check failing"
		case e.Check.Status == "absent":
			check = "check not started"
		}
		if e.Check.Result != "" {
			check += " (" + e.Check.Result + ")"
		}
		c = append(c, check)
	}
	return strings.Join(c, ", ")
}
