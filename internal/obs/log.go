// Package obs builds the logger and the Prometheus registry both services use.
package obs

import (
	"io"
	"log/slog"
)

// NewLogger returns a text or JSON slog logger at the given level.
func NewLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
