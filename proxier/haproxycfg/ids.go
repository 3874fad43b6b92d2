package haproxycfg

// AssignServerIDs gives every server of next an id, keeping ids stable
// from prev: a server (same backend, same server name) that exists in prev
// keeps the id it had there; every other server gets the lowest id not yet
// used in its backend, in the order of next's server slice. Stable ids let
// HAProxy carry server state and stick-table entries across a reload, and
// let the runtime API address servers the same way before and after.
// prev may be nil (the first configuration). Ids already set in next are
// overwritten.
func AssignServerIDs(prev, next *Config) {
	var prevBackends map[string]*Backend
	if prev != nil {
		prevBackends = make(map[string]*Backend, len(prev.Backends))
		for _, be := range prev.Backends {
			prevBackends[be.Name] = be
		}
	}
	for _, be := range next.Backends {
		AssignBackendServerIDs(prevBackends[be.Name], be)
	}
}

// AssignBackendServerIDs is AssignServerIDs for one backend; prev may be nil.
func AssignBackendServerIDs(prev, next *Backend) {
	var old map[string]int
	if prev != nil && len(prev.Servers) > 0 {
		old = make(map[string]int, len(prev.Servers))
		for _, s := range prev.Servers {
			if s.ID > 0 {
				old[s.Name] = s.ID
			}
		}
	}
	used := make(map[int]bool, len(next.Servers))
	for i := range next.Servers {
		s := &next.Servers[i]
		s.ID = 0
		if id, ok := old[s.Name]; ok && !used[id] {
			s.ID = id
			used[id] = true
		}
	}
	free := 1
	for i := range next.Servers {
		s := &next.Servers[i]
		if s.ID != 0 {
			continue
		}
		for used[free] {
			free++
		}
		s.ID = free
		used[free] = true
	}
}
