// Package probe serves the Kubernetes-facing routes both services share:
// /live (the process answers), /ready (memory only: may this pod take
// traffic) and /health (are PostgreSQL and NATS reachable).
package probe

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Check is one dependency check.
type Check struct {
	Name  string
	Check func(context.Context) error
}

// checkTimeout bounds each dependency check of /health.
const checkTimeout = 2 * time.Second

// Ready serves /ready from a flag: 200 {"ready":true,...} or 503. It does no
// I/O, so it answers in microseconds even when dependencies are down.
func Ready(ready *atomic.Bool) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		ok := ready.Load()
		code := http.StatusOK
		if !ok {
			code = http.StatusServiceUnavailable
		}
		write(w, code, map[string]any{"ready": ok, "timestamp": time.Now().UTC().Format(time.RFC3339)})
	}
}

// Live serves /live: 200 whenever the process can answer. Liveness must not
// depend on PostgreSQL or NATS, or an outage would restart every pod.
func Live(w http.ResponseWriter, _ *http.Request) {
	write(w, http.StatusOK, map[string]any{"alive": true, "timestamp": time.Now().UTC().Format(time.RFC3339)})
}

type checkResult struct {
	Status    string  `json:"status"`
	LatencyMS float64 `json:"latency_ms"`
	Error     string  `json:"error,omitempty"`
}

// Health serves /health: runs every check concurrently and answers 200 with
// per-dependency detail, or 503 naming the ones that failed.
func Health(checks ...Check) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		results := make(map[string]checkResult, len(checks))
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, c := range checks {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
				defer cancel()
				start := time.Now()
				err := c.Check(ctx)
				res := checkResult{Status: "up", LatencyMS: float64(time.Since(start).Microseconds()) / 1000}
				if err != nil {
					res.Status, res.Error = "down", err.Error()
				}
				mu.Lock()
				results[c.Name] = res
				mu.Unlock()
			})
		}
		wg.Wait()
		body := map[string]any{"status": "healthy", "checks": results, "timestamp": time.Now().UTC().Format(time.RFC3339)}
		code := http.StatusOK
		var failed []string
		for _, c := range checks {
			if results[c.Name].Status != "up" {
				failed = append(failed, c.Name)
			}
		}
		if len(failed) > 0 {
			code = http.StatusServiceUnavailable
			body["status"] = "unhealthy"
			body["failed"] = failed
		}
		write(w, code, body)
	}
}

func write(w http.ResponseWriter, code int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}
