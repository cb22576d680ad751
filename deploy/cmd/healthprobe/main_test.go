package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		wantCode int
		wantErr  string
	}{
		{name: "ready", status: http.StatusOK, wantCode: 0},
		{name: "no content counts as healthy", status: http.StatusNoContent, wantCode: 0},
		{name: "draining", status: http.StatusServiceUnavailable, wantCode: 1, wantErr: "503 Service Unavailable"},
		{name: "wrong route", status: http.StatusNotFound, wantCode: 1, wantErr: "404 Not Found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
			}))
			defer srv.Close()

			var stderr bytes.Buffer
			code := run([]string{srv.URL + "/ready"}, &stderr)
			if code != tt.wantCode {
				t.Fatalf("run() = %d, want %d (stderr %q)", code, tt.wantCode, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr = %q, want it to mention %q", stderr.String(), tt.wantErr)
			}
		})
	}
}

func TestRunFailures(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	tests := []struct {
		name     string
		args     []string
		wantCode int
	}{
		{name: "no argument", args: nil, wantCode: 2},
		{name: "two arguments", args: []string{"a", "b"}, wantCode: 2},
		{name: "nothing listening", args: []string{closedURL + "/ready"}, wantCode: 1},
		{name: "malformed URL", args: []string{"http://[::1"}, wantCode: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(tt.args, &stderr); code != tt.wantCode {
				t.Fatalf("run(%q) = %d, want %d (stderr %q)", tt.args, code, tt.wantCode, stderr.String())
			}
			if stderr.Len() == 0 {
				t.Error("stderr is empty, want a reason")
			}
		})
	}
}
