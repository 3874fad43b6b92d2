// Package runtimeapi is a client of HAProxy's runtime API (the "stats
// socket") and of the master CLI of an HAProxy running in master-worker mode.
//
// The proxier uses it for the frequent, cheap changes that must not cost a
// reload: the entries of the maps and ACL files that dispatch connections
// to Services and their endpoints (and servers of a backend, which the
// proxier does not use today). Commands are collected in a Batch and
// sent over a single connection in prompt mode, so a thousand changes cost
// one connect and a few milliseconds. Each command's answer is parsed and failures are
// returned as Go errors that wrap sentinel values (ErrNoSuchServer, ...), so
// callers decide with errors.Is rather than by matching HAProxy's text.
//
// Fake implements Interface in memory and keeps server state the way HAProxy
// 2.6 does (added servers start in maintenance, only servers in maintenance
// without connections can be deleted, HAProxy's own error wording) and maps
// and ACLs the way HAProxy 2.6 does (insertion order, duplicates), so unit
// tests of callers can assert on the resulting state.
package runtimeapi
