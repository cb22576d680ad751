// Command healthprobe is the container health check of the nomnom images.
// The images are distroless and have no shell, curl or wget, so Docker and
// Compose health checks run this instead:
//
//	healthprobe http://127.0.0.1:8080/ready
//
// It exits 0 when the URL answers 2xx within the timeout and 1 otherwise.
// Kubernetes does not need it: its kubelet probes the HTTP and gRPC routes
// itself.
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// timeout stays below the Compose health check's own timeout so a hung server
// is reported by this probe, with a reason, rather than killed by Docker.
const timeout = 2 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: healthprobe URL")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := probe(ctx, args[0]); err != nil {
		fmt.Fprintln(stderr, "healthprobe:", err)
		return 1
	}
	return 0
}

func probe(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	// Drain a little so the server sees a clean close; the body itself
	// (e.g. {"ready":false}) is not needed, the status says it all.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("get %s: %s", url, resp.Status)
	}
	return nil
}
