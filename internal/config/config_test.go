package config

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// getenv returns a getenv function backed by vars.
func getenv(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestLoadDefaultsArePlans(t *testing.T) {
	cfg, err := Load(getenv(nil))
	if err != nil {
		t.Fatalf("Load with no variables: %v", err)
	}
	// The plan's names and defaults are a compatibility contract.
	checks := []struct {
		name string
		got  any
		want any
	}{
		{"NATS_STREAM", cfg.NATSStream, "MESSAGES"},
		{"NATS_CONSUMER", cfg.NATSConsumer, "workers"},
		{"WORKER_BATCH_SIZE", cfg.WorkerBatchSize, 10},
		{"WORKER_MAX_DELIVER", cfg.WorkerMaxDeliver, 3},
		{"WORKER_POLL_INTERVAL_MS", cfg.PollInterval(), 100 * time.Millisecond},
		{"NATS_MAX_AGE_HOURS", cfg.NATSMaxAgeHours, 24},
		{"NATS_MAX_BYTES", cfg.NATSMaxBytes, int64(1 << 30)},
		{"NATS_DLQ_MAX_AGE_HOURS", cfg.NATSDLQMaxAgeHrs, 168},
		{"INGEST_MAX_BODY_BYTES", cfg.IngestMaxBody, int64(1 << 20)},
		{"HTTP_ADDR", cfg.HTTPAddr, ":8080"},
		{"WORKER_HTTP_ADDR", cfg.WorkerHTTPAddr, ":8081"},
		{"LOG_LEVEL", cfg.Level(), slog.LevelInfo},
		{"LOG_FORMAT", cfg.LogFormat, "text"},
		{"SHUTDOWN_TIMEOUT", cfg.ShutdownTimeout, 30 * time.Second},
		{"DLQ stream", cfg.DLQStream(), "MESSAGES_DLQ"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestLoadLogLevel(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want slog.Level
	}{
		{"RUST_LOG maps to the level", map[string]string{"RUST_LOG": "debug"}, slog.LevelDebug},
		{"RUST_LOG with module filters", map[string]string{"RUST_LOG": "worker=trace,warn"}, slog.LevelWarn},
		{"LOG_LEVEL wins over RUST_LOG", map[string]string{"RUST_LOG": "debug", "LOG_LEVEL": "error"}, slog.LevelError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(getenv(tt.env))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if cfg.Level() != tt.want {
				t.Errorf("level = %v, want %v", cfg.Level(), tt.want)
			}
		})
	}
}

func TestLoadTracingEndpoint(t *testing.T) {
	tests := []struct {
		name, endpoint string
	}{
		{"off by default", ""},
		{"plain HTTP collector", "http://localhost:4318"},
		{"HTTPS collector behind a path", "https://otel.example.com/otlp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Load(getenv(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": tt.endpoint}))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if cfg.OTelEndpoint != tt.endpoint {
				t.Errorf("OTelEndpoint = %q, want %q", cfg.OTelEndpoint, tt.endpoint)
			}
		})
	}
}

func TestLoadRejectsInvalidValues(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		// want are substrings of the error: the variable, the value and
		// what is allowed.
		want []string
		// secret must not appear in the error.
		secret string
	}{
		{
			name: "batch size not a number",
			env:  map[string]string{"WORKER_BATCH_SIZE": "abc"},
			want: []string{`WORKER_BATCH_SIZE="abc"`, "want an integer"},
		},
		{
			name: "batch size zero",
			env:  map[string]string{"WORKER_BATCH_SIZE": "0"},
			want: []string{`WORKER_BATCH_SIZE="0"`, "from 1 to 10000"},
		},
		{
			name: "database URL unparseable",
			env:  map[string]string{"DATABASE_URL": "://bad"},
			want: []string{"DATABASE_URL", "://bad"},
		},
		{
			name:   "database URL with a bad port does not echo the password",
			env:    map[string]string{"DATABASE_URL": "postgres://nomnom:hunter2@db:99999999/nomnom"},
			want:   []string{"DATABASE_URL", "invalid port"},
			secret: "hunter2",
		},
		{
			name: "log format",
			env:  map[string]string{"LOG_FORMAT": "xml"},
			want: []string{`LOG_FORMAT="xml"`, "text or json"},
		},
		{
			name: "log level",
			env:  map[string]string{"LOG_LEVEL": "loud"},
			want: []string{`LOG_LEVEL="loud"`, "debug, info, warn or error"},
		},
		{
			name: "duration without a unit",
			env:  map[string]string{"WORKER_ACK_WAIT": "5"},
			want: []string{`WORKER_ACK_WAIT="5"`, "a duration"},
		},
		{
			name: "NATS URL with the wrong scheme",
			env:  map[string]string{"NATS_URL": "http://127.0.0.1:4222"},
			want: []string{"NATS_URL", "nats://host:4222"},
		},
		{
			name: "address without a port",
			env:  map[string]string{"HTTP_ADDR": "8080"},
			want: []string{`HTTP_ADDR="8080"`, "host:port"},
		},
		{
			name: "batch limit below body limit",
			env:  map[string]string{"INGEST_MAX_BODY_BYTES": "4096", "INGEST_MAX_BATCH_BYTES": "2048"},
			want: []string{`INGEST_MAX_BATCH_BYTES="2048"`, "at least INGEST_MAX_BODY_BYTES"},
		},
		{
			name: "OTLP endpoint without a scheme",
			env:  map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"},
			want: []string{`OTEL_EXPORTER_OTLP_ENDPOINT="localhost:4318"`, "http:// or https:// URL"},
		},
		{
			name: "OTLP endpoint for gRPC",
			env:  map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://collector:4317"},
			want: []string{`OTEL_EXPORTER_OTLP_ENDPOINT="grpc://collector:4317"`, "http:// or https:// URL"},
		},
		{
			name: "every invalid variable is reported at once",
			env:  map[string]string{"WORKER_BATCH_SIZE": "0", "LOG_FORMAT": "xml", "WORKER_MAX_DELIVER": "-1"},
			want: []string{"WORKER_BATCH_SIZE", "LOG_FORMAT", "WORKER_MAX_DELIVER"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(getenv(tt.env))
			if err == nil {
				t.Fatalf("Load(%v) succeeded, want an error", tt.env)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("error %q reveals the password", err)
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"postgres password", "postgres://nomnom:hunter2@db:5432/nomnom?sslmode=disable", "postgres://nomnom:xxxxx@db:5432/nomnom?sslmode=disable"},
		{"postgres without password", "postgres://postgres@127.0.0.1:5432/nomnom", "postgres://postgres@127.0.0.1:5432/nomnom"},
		{"keyword/value DSN", "host=db user=nomnom password=hunter2 dbname=nomnom", "host=db user=nomnom password=xxxxx dbname=nomnom"},
		{"nats token", "nats://hunter2@127.0.0.1:4222", "nats://xxxxx@127.0.0.1:4222"},
		{"nats user and password", "nats://app:hunter2@127.0.0.1:4222", "nats://app:xxxxx@127.0.0.1:4222"},
		{"nats without credentials", "nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats server list", "nats://a:hunter2@n1:4222,nats://b:hunter2@n2:4222", "nats://a:xxxxx@n1:4222,nats://b:xxxxx@n2:4222"},
		{"unparseable URL", "postgres://nomnom:hunter2@db:badport/nomnom", "postgres://nomnom:xxxxx@db:badport/nomnom"},
		{"password with a comma", "postgres://nomnom:hun,ter2@db/nomnom", "postgres://nomnom:xxxxx@db/nomnom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RedactURL(tt.in)
			if got != tt.want {
				t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if strings.Contains(got, "hunter2") || strings.Contains(got, "hun,ter2") {
				t.Errorf("RedactURL(%q) = %q reveals the secret", tt.in, got)
			}
		})
	}
}

func TestLogValueRedactsSecrets(t *testing.T) {
	cfg, err := Load(getenv(map[string]string{
		"DATABASE_URL":  "postgres://nomnom:hunter2@db:5432/nomnom",
		"NATS_URL":      "nats://app:hunter3@nats:4222",
		"INGEST_TOKENS": "tok-ingest-1,tok-ingest-2",
		"ADMIN_TOKENS":  "tok-admin",
	}))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("starting", "config", cfg)
	out := buf.String()
	for _, secret := range []string{"hunter2", "hunter3", "tok-ingest", "tok-admin"} {
		if strings.Contains(out, secret) {
			t.Errorf("logged config reveals %q: %s", secret, out)
		}
	}
	for _, want := range []string{"config.WORKER_BATCH_SIZE=10", "config.INGEST_TOKENS=\"[2 redacted]\"", "nomnom:xxxxx@db"} {
		if !strings.Contains(out, want) {
			t.Errorf("logged config lacks %q: %s", want, out)
		}
	}
}

func TestRedactURLHidesQueryPasswords(t *testing.T) {
	got := RedactURL("postgres://app@db:5432/nomnom?password=hunter2&sslmode=disable&sslpassword=p2")
	if strings.Contains(got, "hunter2") || strings.Contains(got, "p2&") || strings.HasSuffix(got, "p2") {
		t.Errorf("RedactURL left a password: %s", got)
	}
	if !strings.Contains(got, "sslmode=disable") {
		t.Errorf("RedactURL dropped other parameters: %s", got)
	}
}

func TestInvalidNATSURLIsNotEchoed(t *testing.T) {
	_, err := Load(func(k string) string {
		if k == "NATS_URL" {
			return "nats://alice:hunter2@nats:42x22"
		}
		return ""
	})
	if err == nil || !strings.Contains(err.Error(), "NATS_URL") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error = %v, want one naming NATS_URL without the password", err)
	}
}
