//go:build !linux

package main

// stopWithParent does nothing on this platform.
func stopWithParent() {}
