package apply

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"

	"kube-haproxy.io/kube-haproxy/proxier/haproxycfg"
)

// mapFiles writes the map files of one dispatcher the way
// haproxycfg.RenderMaps renders them, but keeps the text of each Service
// port from one write to the next: the proxier hands in the same objects
// for unchanged Service ports, so after a change only the changed ports
// are rendered again and the files are the concatenation of kept texts.
// At 10,000 Service ports of 10 endpoints, rendering the endpoints map
// whole costs over a hundred milliseconds and hundreds of thousands of
// allocations; copying the kept texts, a few milliseconds.
//
// RenderMaps writes a header, then each Service port's text in order, so
// the text of a port is what RenderMaps writes for a dispatcher holding
// that port alone, without the header. TestMapFilesAreRenderMaps checks
// that the files stay byte for byte RenderMaps's.
type mapFiles struct {
	// ports holds the texts by Service port name; a text is valid while
	// its sp is the very object being written.
	ports map[string]*portText
	// servicesHeader and endpointsHeader start the files.
	servicesHeader, endpointsHeader []byte
}

type portText struct {
	sp *haproxycfg.ServicePort
	// gens are the generations of sp's sets the text was rendered with: a
	// full read of HAProxy's maps may give the same sp other ones.
	gens                [2]uint32
	services, endpoints []byte
}

func generations(sp *haproxycfg.ServicePort) [2]uint32 {
	var g [2]uint32
	if sp.Cluster != nil {
		g[0] = sp.Cluster.Generation
	}
	if sp.Local != nil {
		g[1] = sp.Local.Generation
	}
	return g
}

func newMapFiles() *mapFiles {
	s, e, _ := haproxycfg.RenderMaps(&haproxycfg.Dispatcher{})
	return &mapFiles{ports: map[string]*portText{}, servicesHeader: s, endpointsHeader: e}
}

// texts returns the kept texts of d's Service ports, rendering those of
// new and changed ports, and forgets the ports d no longer has.
func (m *mapFiles) texts(d *haproxycfg.Dispatcher) ([]*portText, error) {
	out := make([]*portText, len(d.ServicePorts))
	for i, sp := range d.ServicePorts {
		t := m.ports[sp.Name]
		if t == nil || t.sp != sp || t.gens != generations(sp) {
			s, e, _ := haproxycfg.RenderMaps(&haproxycfg.Dispatcher{ServicePorts: []*haproxycfg.ServicePort{sp}})
			if !bytes.HasPrefix(s, m.servicesHeader) || !bytes.HasPrefix(e, m.endpointsHeader) {
				return nil, fmt.Errorf("rendering the map entries of %s: unexpected file header", sp.Name)
			}
			// Copies of the exact size: the buffers RenderMaps grew are
			// up to twice as large, and the texts are kept.
			t = &portText{sp: sp, gens: generations(sp), services: bytes.Clone(s[len(m.servicesHeader):]), endpoints: bytes.Clone(e[len(m.endpointsHeader):])}
			m.ports[sp.Name] = t
		}
		out[i] = t
	}
	if len(m.ports) > len(d.ServicePorts) {
		keep := make(map[string]bool, len(d.ServicePorts))
		for _, sp := range d.ServicePorts {
			keep[sp.Name] = true
		}
		for name := range m.ports {
			if !keep[name] {
				delete(m.ports, name)
			}
		}
	}
	return out, nil
}

// write replaces the chosen files of d; durable flushes them to disk.
func (m *mapFiles) write(d *haproxycfg.Dispatcher, services, endpoints, sources, durable bool) error {
	texts, err := m.texts(d)
	if err != nil {
		return err
	}
	concat := func(header []byte, part func(*portText) []byte) func(w io.Writer) error {
		return func(w io.Writer) error {
			if _, err := w.Write(header); err != nil {
				return err
			}
			for _, t := range texts {
				if _, err := w.Write(part(t)); err != nil {
					return err
				}
			}
			return nil
		}
	}
	if services {
		if err := replaceFileWith(d.ServicesMap(), durable, concat(m.servicesHeader, func(t *portText) []byte { return t.services })); err != nil {
			return err
		}
	}
	if endpoints {
		if err := replaceFileWith(d.EndpointsMap(), durable, concat(m.endpointsHeader, func(t *portText) []byte { return t.endpoints })); err != nil {
			return err
		}
	}
	if sources {
		// Each prefix once, as the runtime updates keep HAProxy's copy.
		var unique []netip.Prefix
		for _, p := range d.ClusterSources {
			if !slices.ContainsFunc(unique, func(u netip.Prefix) bool { return u.Masked() == p.Masked() }) {
				unique = append(unique, p)
			}
		}
		_, _, acl := haproxycfg.RenderMaps(&haproxycfg.Dispatcher{ClusterSources: unique})
		if err := replaceFile(d.ClusterSourcesACL(), acl, durable); err != nil {
			return err
		}
	}
	return nil
}

// replaceFileWith is replaceFile with the content written by fill, through
// a buffer: a file of megabytes is never held whole in memory.
func replaceFileWith(path string, durable bool, fill func(w io.Writer) error) error {
	tmp, err := writeTempFileWith(path, durable, func(f *os.File) error {
		w := bufio.NewWriterSize(f, 256<<10)
		if err := fill(w); err != nil {
			return err
		}
		return w.Flush()
	})
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
