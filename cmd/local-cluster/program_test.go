package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestProgramFatalfEndsTheStartWithItsError: a kit's Fatalf stops the
// start-up where it is called (nothing after it runs) and run returns its
// message; cleanups registered before it run, last first.
func TestProgramFatalfEndsTheStartWithItsError(t *testing.T) {
	p := &program{dir: t.TempDir()}
	var order []string
	reached := false
	err := p.run(func() error {
		p.Cleanup(func() { order = append(order, "first") })
		p.Cleanup(func() { order = append(order, "second") })
		p.Fatalf("starting %s: %v", "etcd", errors.New("exited"))
		reached = true
		return nil
	})
	require.EqualError(t, err, "starting etcd: exited")
	assert.False(t, reached, "Fatalf must not return")
	p.cleanup()
	assert.Equal(t, []string{"second", "first"}, order)
}

func TestProgramReturnsErrorsAndErrorf(t *testing.T) {
	p := &program{dir: t.TempDir()}
	assert.NoError(t, p.run(func() error { return nil }))

	p = &program{dir: t.TempDir()}
	err := p.run(func() error {
		p.Errorf("a pod did not stop")
		return errors.New("the demo does not answer")
	})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "a pod did not stop")
	assert.Contains(t, err.Error(), "the demo does not answer")
}

func TestProgramTempDirIsInTheStateDirectory(t *testing.T) {
	p := &program{dir: t.TempDir()}
	a, b := p.TempDir(), p.TempDir()
	assert.NotEqual(t, a, b)
	for _, d := range []string{a, b} {
		assert.Equal(t, p.dir, filepath.Dir(d))
		info, err := os.Stat(d)
		require.NoError(t, err)
		assert.True(t, info.IsDir())
	}
}
