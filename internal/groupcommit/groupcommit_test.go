package groupcommit

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nomnomhq/nomnom/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBatchesConcurrentSubmits(t *testing.T) {
	var mu sync.Mutex
	var flushed []int
	var calls, firstSize atomic.Int32
	release := make(chan struct{})
	c := New(func(_ context.Context, items []int) error {
		if calls.Add(1) == 1 {
			firstSize.Store(int32(len(items)))
			<-release // hold the first flush so the rest queue up behind it
		}
		mu.Lock()
		flushed = append(flushed, items...)
		mu.Unlock()
		return nil
	}, 1000, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()

	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := c.Submit(context.Background(), i); err != nil {
				t.Errorf("submit %d: %v", i, err)
			}
		})
	}
	// Wait until the first flush is held and every other item is queued.
	testutil.WaitFor(t, 10*time.Second, func() (bool, error) {
		first := int(firstSize.Load())
		return first > 0 && first+len(c.queue) == n, nil
	})
	close(release)
	wg.Wait()
	cancel()
	<-done

	if len(flushed) != n {
		t.Fatalf("flushed %d items, want %d", len(flushed), n)
	}
	// Either the first flush took everything, or it was held and the rest
	// queued behind it went out together in one more.
	want := int32(2)
	if firstSize.Load() == n {
		want = 1
	}
	if got := calls.Load(); got != want {
		t.Fatalf("flush called %d times (first with %d items), want %d", got, firstSize.Load(), want)
	}
}

func TestSubmitReturnsFlushError(t *testing.T) {
	boom := errors.New("boom")
	c := New(func(context.Context, []string) error { return boom }, 10, 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	if err := c.Submit(context.Background(), "a", "b"); !errors.Is(err, boom) {
		t.Fatalf("Submit error = %v, want %v", err, boom)
	}
	cancel()
	<-done
	if err := c.Submit(context.Background(), "late"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit after stop = %v, want ErrClosed", err)
	}
}
