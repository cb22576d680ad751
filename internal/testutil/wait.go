package testutil

import (
	"testing"
	"time"
)

// pollInterval is short because conditions are cheap queries against local
// services and tests should finish as soon as the condition holds.
const pollInterval = 10 * time.Millisecond

// WaitFor calls cond every 10ms until it returns true, and fails the test if
// that has not happened within timeout. cond reports progress through its
// error: an error does not stop the polling, but the one from the last call
// is what the failure message shows, so return something like
// fmt.Errorf("status = %s, want completed") rather than (false, nil).
//
// Use it instead of time.Sleep to wait for asynchronous effects (a row
// written by a consumer, a message arriving in a stream).
func WaitFor(t testing.TB, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()

	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return
		}
		// Keep only the latest error: it describes the state at the deadline.
		lastErr = err
		select {
		case <-deadline.C:
			if lastErr != nil {
				t.Fatalf("condition not met within %s: %v", timeout, lastErr)
			} else {
				t.Fatalf("condition not met within %s", timeout)
			}
			return
		case <-tick.C:
		}
	}
}
