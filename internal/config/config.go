// Package config parses nomnom's environment variables into a typed Config.
// It is called once, from main; nothing below main reads the environment.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Config is every setting of the ingest service, the worker and the CLI's
// all-in-one mode. Names and defaults of the first block are those of the
// original pre-Kubernetes plan; CONFIGURATION_REFERENCE.md documents each.
type Config struct {
	NATSURL           string        `env:"NATS_URL" envDefault:"nats://127.0.0.1:4222"`
	NATSStream        string        `env:"NATS_STREAM" envDefault:"MESSAGES"`
	NATSConsumer      string        `env:"NATS_CONSUMER" envDefault:"workers"`
	WorkerBatchSize   int           `env:"WORKER_BATCH_SIZE" envDefault:"10"`
	WorkerMaxDeliver  int           `env:"WORKER_MAX_DELIVER" envDefault:"3"`
	WorkerPollMS      int           `env:"WORKER_POLL_INTERVAL_MS" envDefault:"100"`
	NATSMaxAgeHours   int           `env:"NATS_MAX_AGE_HOURS" envDefault:"24"`
	NATSMaxBytes      int64         `env:"NATS_MAX_BYTES" envDefault:"1073741824"`
	DatabaseURL       string        `env:"DATABASE_URL" envDefault:"postgres://postgres@127.0.0.1:5432/nomnom?sslmode=disable"`
	RustLog           string        `env:"RUST_LOG"`
	HTTPAddr          string        `env:"HTTP_ADDR" envDefault:":8080"`
	WorkerHTTPAddr    string        `env:"WORKER_HTTP_ADDR" envDefault:":8081"`
	LogLevel          string        `env:"LOG_LEVEL"`
	LogFormat         string        `env:"LOG_FORMAT" envDefault:"text"`
	NATSDLQMaxAgeHrs  int           `env:"NATS_DLQ_MAX_AGE_HOURS" envDefault:"168"`
	NATSDLQMaxBytes   int64         `env:"NATS_DLQ_MAX_BYTES" envDefault:"1073741824"`
	NATSReplicas      int           `env:"NATS_REPLICAS" envDefault:"1"`
	NATSDuplicates    time.Duration `env:"NATS_DUPLICATE_WINDOW" envDefault:"2m"`
	IngestMaxBody     int64         `env:"INGEST_MAX_BODY_BYTES" envDefault:"1048576"`
	IngestMaxBatch    int64         `env:"INGEST_MAX_BATCH_BYTES" envDefault:"16777216"`
	IngestTokens      []string      `env:"INGEST_TOKENS"`
	AdminTokens       []string      `env:"ADMIN_TOKENS"`
	ShutdownTimeout   time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"30s"`
	ShutdownDrain     time.Duration `env:"SHUTDOWN_DRAIN_DELAY" envDefault:"0s"`
	WorkerConcurrency int           `env:"WORKER_CONCURRENCY" envDefault:"2"`
	WorkerAckWait     time.Duration `env:"WORKER_ACK_WAIT" envDefault:"30s"`
	WorkerRetryBase   time.Duration `env:"WORKER_RETRY_BASE_DELAY" envDefault:"1s"`
	WorkerRetryMax    time.Duration `env:"WORKER_RETRY_MAX_DELAY" envDefault:"1m"`
	WorkerStmtTimeout time.Duration `env:"WORKER_STATEMENT_TIMEOUT" envDefault:"10s"`
	DLQMaxReplays     int           `env:"DLQ_MAX_REPLAYS" envDefault:"5"`
	DatabaseMaxConns  int           `env:"DATABASE_MAX_CONNS" envDefault:"8"`
	OTelEndpoint      string        `env:"OTEL_EXPORTER_OTLP_ENDPOINT"`
	OTelServiceName   string        `env:"OTEL_SERVICE_NAME"`
}

// Load reads the variables through getenv, applies defaults and validates
// the result. Every error names the variable, its value and what is allowed.
func Load(getenv func(string) string) (Config, error) {
	var cfg Config
	environ := map[string]string{}
	for _, key := range Keys() {
		if v := getenv(key); v != "" {
			environ[key] = v
		}
	}
	if err := env.ParseWithOptions(&cfg, env.Options{Environment: environ}); err != nil {
		return Config{}, explain(err, environ)
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = levelFromRustLog(cfg.RustLog)
	}
	if err := cfg.validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Keys lists every variable Config reads, in declaration order.
func Keys() []string {
	t := reflect.TypeFor[Config]()
	keys := make([]string, 0, t.NumField())
	for f := range t.Fields() {
		keys = append(keys, f.Tag.Get("env"))
	}
	return keys
}

// Defaults maps each variable to its default value ("" when it has none).
func Defaults() map[string]string {
	t := reflect.TypeFor[Config]()
	out := make(map[string]string, t.NumField())
	for f := range t.Fields() {
		out[f.Tag.Get("env")] = f.Tag.Get("envDefault")
	}
	return out
}

// explain rewrites the env library's per-field errors into per-variable ones.
func explain(err error, environ map[string]string) error {
	byField := map[string]string{}
	for f := range reflect.TypeFor[Config]().Fields() {
		byField[f.Name] = f.Tag.Get("env")
	}
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return err
	}
	var errs []error
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			key := byField[pe.Name]
			errs = append(errs, fmt.Errorf("%s=%q is invalid: want %s", key, environ[key], kind(pe.Type)))
			continue
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

func kind(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "a duration such as 500ms, 30s or 2m"
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		return "an integer"
	default:
		return t.String()
	}
}

func levelFromRustLog(v string) string {
	// RUST_LOG may be "info" or "worker=debug,info"; take the bare level.
	for part := range strings.SplitSeq(v, ",") {
		part = strings.ToLower(strings.TrimSpace(part))
		switch part {
		case "trace", "debug":
			return "debug"
		case "info", "warn", "error":
			return part
		}
	}
	return "info"
}

func (c *Config) validate() error {
	var errs []error
	check := func(ok bool, key string, value any, want string) {
		if !ok {
			errs = append(errs, fmt.Errorf("%s=%q is invalid: want %s", key, fmt.Sprint(value), want))
		}
	}
	intRange := func(key string, v, lo, hi int) {
		check(v >= lo && v <= hi, key, v, fmt.Sprintf("an integer from %d to %d", lo, hi))
	}
	check(validNATSURL(c.NATSURL), "NATS_URL", RedactURL(c.NATSURL), "a URL such as nats://host:4222")
	check(validName(c.NATSStream), "NATS_STREAM", c.NATSStream, "letters, digits, - and _")
	check(validName(c.NATSConsumer), "NATS_CONSUMER", c.NATSConsumer, "letters, digits, - and _")
	intRange("WORKER_BATCH_SIZE", c.WorkerBatchSize, 1, 10000)
	intRange("WORKER_MAX_DELIVER", c.WorkerMaxDeliver, 1, 100)
	intRange("WORKER_POLL_INTERVAL_MS", c.WorkerPollMS, 1, 60000)
	intRange("WORKER_CONCURRENCY", c.WorkerConcurrency, 1, 64)
	intRange("NATS_MAX_AGE_HOURS", c.NATSMaxAgeHours, 0, 24*365*10)
	intRange("NATS_DLQ_MAX_AGE_HOURS", c.NATSDLQMaxAgeHrs, 0, 24*365*10)
	intRange("NATS_REPLICAS", c.NATSReplicas, 1, 5)
	intRange("DLQ_MAX_REPLAYS", c.DLQMaxReplays, 0, 1000)
	intRange("DATABASE_MAX_CONNS", c.DatabaseMaxConns, 1, 1000)
	check(c.NATSMaxBytes == -1 || c.NATSMaxBytes > 0, "NATS_MAX_BYTES", c.NATSMaxBytes, "a positive number of bytes, or -1 for no limit")
	check(c.NATSDLQMaxBytes == -1 || c.NATSDLQMaxBytes > 0, "NATS_DLQ_MAX_BYTES", c.NATSDLQMaxBytes, "a positive number of bytes, or -1 for no limit")
	check(c.IngestMaxBody >= 1024, "INGEST_MAX_BODY_BYTES", c.IngestMaxBody, "at least 1024")
	check(c.IngestMaxBatch >= c.IngestMaxBody, "INGEST_MAX_BATCH_BYTES", c.IngestMaxBatch, "at least INGEST_MAX_BODY_BYTES")
	check(c.NATSDuplicates >= time.Second, "NATS_DUPLICATE_WINDOW", c.NATSDuplicates, "a duration of at least 1s")
	check(c.ShutdownDrain >= 0 && c.ShutdownDrain <= 5*time.Minute, "SHUTDOWN_DRAIN_DELAY", c.ShutdownDrain, "a duration from 0s to 5m")
	check(c.ShutdownTimeout > 0, "SHUTDOWN_TIMEOUT", c.ShutdownTimeout, "a positive duration")
	check(c.WorkerAckWait >= time.Second, "WORKER_ACK_WAIT", c.WorkerAckWait, "a duration of at least 1s")
	check(c.WorkerStmtTimeout >= 10*time.Millisecond && c.WorkerStmtTimeout < c.WorkerAckWait, "WORKER_STATEMENT_TIMEOUT", c.WorkerStmtTimeout, "a duration of at least 10ms and shorter than WORKER_ACK_WAIT")
	check(c.WorkerRetryBase > 0, "WORKER_RETRY_BASE_DELAY", c.WorkerRetryBase, "a positive duration")
	check(c.WorkerRetryMax >= c.WorkerRetryBase, "WORKER_RETRY_MAX_DELAY", c.WorkerRetryMax, "a duration no shorter than WORKER_RETRY_BASE_DELAY")
	check(validAddr(c.HTTPAddr), "HTTP_ADDR", c.HTTPAddr, "host:port, such as :8080")
	check(validAddr(c.WorkerHTTPAddr), "WORKER_HTTP_ADDR", c.WorkerHTTPAddr, "host:port, such as :8081")
	check(validLevel(c.LogLevel), "LOG_LEVEL", c.LogLevel, "debug, info, warn or error")
	check(c.LogFormat == "text" || c.LogFormat == "json", "LOG_FORMAT", c.LogFormat, "text or json")
	check(c.OTelEndpoint == "" || validHTTPURL(c.OTelEndpoint), "OTEL_EXPORTER_OTLP_ENDPOINT", RedactURL(c.OTelEndpoint), "empty, or an http:// or https:// URL such as http://localhost:4318")
	if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		// pgx redacts the password in its message; never echo the raw URL.
		errs = append(errs, fmt.Errorf("DATABASE_URL is invalid: %v", err))
	}
	return errors.Join(errs...)
}

func validNATSURL(s string) bool {
	for part := range strings.SplitSeq(s, ",") {
		u, err := url.Parse(strings.TrimSpace(part))
		if err != nil || u.Host == "" {
			return false
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return false
		}
	}
	return s != ""
}

func validHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

func validAddr(s string) bool {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 0 && n < 65536
}

func validLevel(s string) bool {
	var l slog.Level
	return l.UnmarshalText([]byte(s)) == nil
}

// Level returns LOG_LEVEL as a slog level.
func (c Config) Level() slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(c.LogLevel))
	return l
}

// PollInterval is WORKER_POLL_INTERVAL_MS as a duration.
func (c Config) PollInterval() time.Duration {
	return time.Duration(c.WorkerPollMS) * time.Millisecond
}

// DLQStream is the dead-letter stream's name, <NATS_STREAM>_DLQ.
func (c Config) DLQStream() string { return c.NATSStream + "_DLQ" }

// LogValue prints the effective configuration with secrets redacted, so
// slog.Info("config", "config", cfg) is safe.
func (c Config) LogValue() slog.Value {
	v := reflect.ValueOf(c)
	t := v.Type()
	attrs := make([]slog.Attr, 0, t.NumField())
	for i := range t.NumField() {
		key := t.Field(i).Tag.Get("env")
		var s string
		switch key {
		case "DATABASE_URL":
			s = RedactURL(c.DatabaseURL)
		case "NATS_URL":
			s = RedactURL(c.NATSURL)
		case "OTEL_EXPORTER_OTLP_ENDPOINT":
			s = RedactURL(c.OTelEndpoint)
		case "INGEST_TOKENS", "ADMIN_TOKENS":
			s = fmt.Sprintf("[%d redacted]", v.Field(i).Len())
		default:
			s = fmt.Sprint(v.Field(i).Interface())
		}
		attrs = append(attrs, slog.String(key, s))
	}
	return slog.GroupValue(attrs...)
}

// RedactURL hides the password of a URL (and of key=value DSNs).
func RedactURL(raw string) string {
	// NATS_URL may list several servers, each with its own credentials.
	if parts := strings.Split(raw, ","); len(parts) > 1 && strings.Count(raw, "://") == len(parts) {
		for i, p := range parts {
			parts[i] = RedactURL(p)
		}
		return strings.Join(parts, ",")
	}
	u, err := url.Parse(raw)
	if err != nil && strings.Contains(raw, "://") {
		return redactUnparsed(raw)
	}
	if err != nil || u.Scheme == "" {
		fields := strings.Fields(raw)
		for i, f := range fields {
			if strings.HasPrefix(strings.ToLower(f), "password=") {
				fields[i] = "password=xxxxx"
			}
		}
		return strings.Join(fields, " ")
	}
	if u.User != nil {
		_, hasPassword := u.User.Password()
		switch {
		case hasPassword:
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		case !strings.HasPrefix(u.Scheme, "postgres"):
			u.User = url.User("xxxxx") // nats://token@host: the user part is a token
		}
	}
	// libpq also takes secrets as query parameters.
	if q := u.Query(); q.Has("password") || q.Has("sslpassword") {
		for _, k := range []string{"password", "sslpassword"} {
			if q.Has(k) {
				q.Set(k, "xxxxx")
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// redactUnparsed hides the user information of a URL that url.Parse
// rejects (a bad port, say), which would otherwise be echoed whole.
func redactUnparsed(raw string) string {
	start := strings.Index(raw, "://") + len("://")
	at := strings.LastIndex(raw, "@")
	if at < start {
		return raw
	}
	user, _, hasPassword := strings.Cut(raw[start:at], ":")
	switch {
	case hasPassword:
		user += ":xxxxx"
	case !strings.HasPrefix(raw, "postgres"):
		user = "xxxxx"
	}
	return raw[:start] + user + raw[at:]
}
