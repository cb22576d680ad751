// Package groupcommit turns many concurrent small writes into few large ones.
// Callers Submit items and wait; flushers take everything queued so far and
// write it in one call. Under light load a flush holds one item and adds no
// delay; under heavy load batches grow by themselves, with no timer to tune.
package groupcommit

import (
	"context"
	"errors"
	"sync"
)

// ErrClosed is returned by Submit once the committer has stopped.
var ErrClosed = errors.New("groupcommit: closed")

// FlushFunc writes a batch. It is called by one flusher goroutine at a time
// per batch; several batches may be in flight when flushers > 1.
type FlushFunc[T any] func(ctx context.Context, items []T) error

type request[T any] struct {
	items []T
	done  chan error
}

// Committer batches items for a FlushFunc.
type Committer[T any] struct {
	flush    FlushFunc[T]
	maxItems int
	flushers int
	queue    chan request[T]
	stopped  chan struct{} // closed when flushers stop taking new work
	finished chan struct{} // closed when the last queued item was flushed
	once     sync.Once
}

// New returns a Committer that flushes at most maxItems per call (a single
// request larger than that is still flushed whole) with the given number of
// concurrent flushers.
func New[T any](flush FlushFunc[T], maxItems, flushers int) *Committer[T] {
	return &Committer[T]{
		flush:    flush,
		maxItems: max(maxItems, 1),
		flushers: max(flushers, 1),
		queue:    make(chan request[T], 4096),
		stopped:  make(chan struct{}),
		finished: make(chan struct{}),
	}
}

// Submit queues items and waits until they are flushed, returning the
// flush's error. It returns early if ctx ends (the items may still be
// written) or the committer has stopped.
func (c *Committer[T]) Submit(ctx context.Context, items ...T) error {
	if len(items) == 0 {
		return nil
	}
	select {
	case <-c.stopped:
		return ErrClosed
	default:
	}
	req := request[T]{items: items, done: make(chan error, 1)}
	select {
	case c.queue <- req:
	case <-c.stopped:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-c.finished:
		// Queued just as the committer stopped: flushed by the final drain,
		// or never.
		select {
		case err := <-req.done:
			return err
		default:
			return ErrClosed
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run flushes until ctx ends, then flushes what is still queued (with ctx's
// values but without its cancellation) and returns. Stop callers first: a
// Submit after Run returned gets ErrClosed.
func (c *Committer[T]) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range c.flushers {
		wg.Go(func() { c.loop(ctx) })
	}
	wg.Wait()
	c.once.Do(func() { close(c.stopped) })
	c.drain(context.WithoutCancel(ctx))
	close(c.finished)
	return nil
}

func (c *Committer[T]) loop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case first := <-c.queue:
			c.flushFrom(ctx, first)
		}
	}
}

// flushFrom flushes first plus whatever else is queued, up to maxItems.
func (c *Committer[T]) flushFrom(ctx context.Context, first request[T]) {
	reqs := []request[T]{first}
	n := len(first.items)
collect:
	for n < c.maxItems {
		select {
		case r := <-c.queue:
			reqs = append(reqs, r)
			n += len(r.items)
		default:
			break collect
		}
	}
	items := make([]T, 0, n)
	for _, r := range reqs {
		items = append(items, r.items...)
	}
	err := c.flush(ctx, items)
	for _, r := range reqs {
		r.done <- err
	}
}

func (c *Committer[T]) drain(ctx context.Context) {
	for {
		select {
		case r := <-c.queue:
			c.flushFrom(ctx, r)
		default:
			return
		}
	}
}
