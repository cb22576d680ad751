//go:build !unix

package devenv

// lockDir does not lock on this platform.
func lockDir(string) (unlock func(), err error) { return func() {}, nil }
