package bootstrap

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/obs"
)

// RunFunc starts a service from configuration and serves until ctx ends;
// onListen, if set, learns its HTTP address.
type RunFunc func(ctx context.Context, cfg config.Config, logger *slog.Logger, onListen func(addr string)) error

// Main is what a service's main does: parse the environment (an invalid
// value stops start-up naming the variable), log the effective
// configuration with secrets redacted, and run.
func Main(ctx context.Context, name string, getenv func(string) string, stdout io.Writer, run RunFunc) error {
	cfg, err := config.Load(getenv)
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	logger := obs.NewLogger(stdout, cfg.LogFormat, cfg.Level())
	logger.Info("starting nomnom "+name, "config", cfg)
	return run(ctx, cfg, logger, nil)
}
