// Package hack tests the checks of hack/verify-patches.sh that need no
// upstream tree (--headers-only): patches/ and patches/series agree, and
// every patch carries the header docs/patches.md asks for. The slower
// checks (the series applies, generated files are current) run in
// `make test` and `make verify`.
package hack

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// checkPatchSet runs the header and series checks on the patch set in dir
// ("" for patches/).
func checkPatchSet(t *testing.T, dir string) (string, error) {
	t.Helper()
	args := []string{"--headers-only"}
	if dir != "" {
		args = append(args, dir)
	}
	out, err := exec.Command("./verify-patches.sh", args...).CombinedOutput()
	return string(out), err
}

// series returns the entries of the series file in dir, in order.
func series(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "series"))
	require.NoError(t, err)
	var entries []string
	for _, line := range strings.Split(string(data), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.TrimSpace(line); line != "" {
			entries = append(entries, line)
		}
	}
	return entries
}

func TestPatchSet(t *testing.T) {
	out, err := checkPatchSet(t, "")
	require.NoError(t, err, out)
}

// The fields the check asks for are the ones docs/patches.md documents.
func TestHeaderFieldsAreTheDocumentedOnes(t *testing.T) {
	lib, err := os.ReadFile("stage-lib.sh")
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^KH_PATCH_FIELDS=\(([^)]*)\)$`).FindSubmatch(lib)
	require.NotNil(t, m, "stage-lib.sh sets KH_PATCH_FIELDS")
	fields := strings.Fields(string(m[1]))
	require.NotEmpty(t, fields)

	doc, err := os.ReadFile("../docs/patches.md")
	require.NoError(t, err)
	for _, f := range fields {
		require.Contains(t, string(doc), "`"+f+"`", "docs/patches.md documents the header field %s", f)
	}
}

// Each broken copy of patches/ is refused, and the error names the patch and
// what is wrong with it.
func TestBrokenPatchSetsAreRefused(t *testing.T) {
	entries := series(t, "../patches")
	require.GreaterOrEqual(t, len(entries), 2)
	first, last := entries[0], entries[len(entries)-1]

	editPatch := func(name string, edit func(string) string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			p := filepath.Join(dir, name)
			data, err := os.ReadFile(p)
			require.NoError(t, err)
			edited := edit(string(data))
			require.NotEqual(t, string(data), edited, "the edit changes %s", name)
			require.NoError(t, os.WriteFile(p, []byte(edited), 0o644))
		}
	}
	writeSeries := func(entries ...string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "series"), []byte(strings.Join(entries, "\n")+"\n"), 0o644))
		}
	}
	swapped := append([]string{}, entries...)
	swapped[len(swapped)-2], swapped[len(swapped)-1] = swapped[len(swapped)-1], swapped[len(swapped)-2]

	for _, tc := range []struct {
		name   string
		mutate func(t *testing.T, dir string)
		want   string
	}{{
		name: "a header field renamed",
		mutate: editPatch(first, func(s string) string {
			return strings.Replace(s, "\nTests:", "\nTest:", 1)
		}),
		want: first + ": the header has no Tests: field",
	}, {
		name: "a header field left empty",
		mutate: editPatch(last, func(s string) string {
			return regexp.MustCompile(`(?m)^Forwarded:.*$`).ReplaceAllLiteralString(s, "Forwarded:")
		}),
		want: last + ": the header has no Forwarded: field",
	}, {
		name: "a header field only in the diff",
		mutate: editPatch(last, func(s string) string {
			s = regexp.MustCompile(`(?m)^Generated:.*$`).ReplaceAllLiteralString(s, "Made-by: hand")
			return s + "+Generated: by hand\n"
		}),
		want: last + ": the header has no Generated: field",
	}, {
		name: "a patch file not in the series",
		mutate: func(t *testing.T, dir string) {
			data, err := os.ReadFile(filepath.Join(dir, first))
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(dir, "0009-forgotten.patch"), data, 0o644))
		},
		want: "0009-forgotten.patch: not listed in",
	}, {
		name: "a series entry without its file",
		mutate: func(t *testing.T, dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, last)))
		},
		want: "series: " + last + " is listed but does not exist",
	}, {
		name:   "a series entry twice",
		mutate: writeSeries(append(append([]string{}, entries...), first)...),
		want:   "series: " + first + " is listed twice",
	}, {
		name:   "numbers out of series order",
		mutate: writeSeries(swapped...),
		want:   swapped[len(swapped)-1] + ": its number is not above the previous patch's",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.CopyFS(dir, os.DirFS("../patches")))
			tc.mutate(t, dir)
			out, err := checkPatchSet(t, dir)
			require.Error(t, err, out)
			require.Contains(t, out, "verify-patches: FAILED")
			require.Contains(t, out, tc.want)
		})
	}
}
