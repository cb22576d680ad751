package deploy

import (
	"bufio"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/nomnomhq/nomnom/internal/config"
)

// repoRoot is where compose.yaml, .env.example and the reference live.
const repoRoot = ".."

// routes are the HTTP routes both services really serve for probes; a probe
// or health check aimed anywhere else would fail forever.
var routes = []string{"/ready", "/live", "/health", "/metrics"}

// appServices are the compose services built from this repository, with the
// port each listens on and the variable that sets it.
var appServices = []struct {
	name       string
	port       string
	addrKey    string
	dockerfile string
}{
	{name: "ingest", port: "8080", addrKey: "HTTP_ADDR", dockerfile: "services/ingest/Dockerfile"},
	{name: "worker", port: "8081", addrKey: "WORKER_HTTP_ADDR", dockerfile: "services/worker/Dockerfile"},
}

// loadCompose loads compose.yaml the way `docker compose` does, but with
// only the given environment: no shell variables and no .env file, so the
// result does not depend on the machine running the test.
func loadCompose(t *testing.T, env ...string) *types.Project {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(root, "compose.yaml")},
		cli.WithWorkingDirectory(root),
		cli.WithEnv(env),
	)
	if err != nil {
		t.Fatalf("compose options: %v", err)
	}
	project, err := opts.LoadProject(t.Context())
	if err != nil {
		t.Fatalf("load compose.yaml: %v", err)
	}
	return project
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return s
}

func TestComposeServices(t *testing.T) {
	p := loadCompose(t)

	for _, name := range []string{"postgres", "nats", "ingest", "worker"} {
		t.Run(name, func(t *testing.T) {
			s := service(t, p, name)
			hc := s.HealthCheck
			if hc == nil || hc.Disable || len(hc.Test) < 2 {
				t.Fatalf("service %s has no health check: %+v", name, hc)
			}
			for _, v := range s.Volumes {
				if v.Type != types.VolumeTypeVolume {
					continue
				}
				if _, ok := p.Volumes[v.Source]; !ok {
					t.Errorf("service %s mounts volume %q, which is not declared under volumes:", name, v.Source)
				}
			}
		})
	}

	t.Run("postgres", func(t *testing.T) {
		s := service(t, p, "postgres")
		if s.Image != "postgres:16" {
			t.Errorf("image = %q, want postgres:16", s.Image)
		}
		if !strings.Contains(strings.Join(s.HealthCheck.Test, " "), "pg_isready") {
			t.Errorf("health check %q does not use pg_isready", s.HealthCheck.Test)
		}
		if !hasNamedVolume(s, "/var/lib/postgresql/data") {
			t.Error("the database lives in the container, not a named volume")
		}
	})

	t.Run("nats", func(t *testing.T) {
		s := service(t, p, "nats")
		if !strings.HasPrefix(s.Image, "nats:2.11") {
			t.Errorf("image = %q, want nats:2.11", s.Image)
		}
		cmd := strings.Join(s.Command, " ")
		for _, flag := range []string{"-js", "-sd /data", "-m 8222"} {
			if !strings.Contains(cmd, flag) {
				t.Errorf("command %q lacks %q", cmd, flag)
			}
		}
		if !strings.Contains(strings.Join(s.HealthCheck.Test, " "), ":8222/healthz") {
			t.Errorf("health check %q does not ask the monitoring port's /healthz", s.HealthCheck.Test)
		}
		if !hasNamedVolume(s, "/data") {
			t.Error("the JetStream store lives in the container, not a named volume")
		}
	})

	for _, app := range appServices {
		t.Run(app.name, func(t *testing.T) {
			s := service(t, p, app.name)

			if s.Build == nil || s.Build.Dockerfile != app.dockerfile {
				t.Fatalf("build = %+v, want dockerfile %s", s.Build, app.dockerfile)
			}
			root, _ := filepath.Abs(repoRoot)
			if s.Build.Context != root {
				t.Errorf("build context = %q, want the repository root %q (go.work needs every module)", s.Build.Context, root)
			}

			if !slices.ContainsFunc(s.Ports, func(pc types.ServicePortConfig) bool {
				return pc.Published == app.port && pc.Target == mustPort(t, app.port)
			}) {
				t.Errorf("ports = %+v, want %s published to %s", s.Ports, app.port, app.port)
			}

			// The health check must hit this service's own port and a real route.
			probe := s.HealthCheck.Test[len(s.HealthCheck.Test)-1]
			u, err := url.Parse(probe)
			if err != nil || u.Port() != app.port || u.Path != "/ready" {
				t.Errorf("health check target %q, want http://127.0.0.1:%s/ready", probe, app.port)
			}

			for _, dep := range []string{"postgres", "nats"} {
				if d, ok := s.DependsOn[dep]; !ok || d.Condition != types.ServiceConditionHealthy {
					t.Errorf("depends_on %s = %+v, want condition service_healthy", dep, d)
				}
			}

			addr := s.Environment[app.addrKey]
			if addr == nil || *addr != ":"+app.port {
				t.Errorf("%s = %v, want :%s to match the published port", app.addrKey, deref(addr), app.port)
			}
		})
	}
}

// TestComposeEnvironment checks that ingest and worker get only variables
// the binaries read, that the connection settings point at the compose
// services whatever the caller's environment says, that tuning variables
// pass through, and that the result is a configuration the binaries accept.
func TestComposeEnvironment(t *testing.T) {
	known := keySet()
	tests := []struct {
		name string
		env  []string
		want map[string]*string // nil value: must stay unset
	}{
		{
			name: "empty environment keeps the binaries' defaults",
			env:  nil,
			want: map[string]*string{
				"DATABASE_URL":      ptr("postgres://nomnom:nomnom@postgres:5432/nomnom?sslmode=disable"),
				"NATS_URL":          ptr("nats://nats:4222"),
				"WORKER_BATCH_SIZE": nil,
				"LOG_LEVEL":         nil,
			},
		},
		{
			name: "shell or .env values pass through, except the compose network's addresses",
			env: []string{
				"WORKER_BATCH_SIZE=50",
				"WORKER_MAX_DELIVER=5",
				"DATABASE_URL=postgres://postgres@127.0.0.1:5432/nomnom?sslmode=disable",
				"NATS_URL=nats://127.0.0.1:4222",
				"HTTP_ADDR=:9999",
			},
			want: map[string]*string{
				"WORKER_BATCH_SIZE":  ptr("50"),
				"WORKER_MAX_DELIVER": ptr("5"),
				"DATABASE_URL":       ptr("postgres://nomnom:nomnom@postgres:5432/nomnom?sslmode=disable"),
				"NATS_URL":           ptr("nats://nats:4222"),
				"HTTP_ADDR":          ptr(":8080"),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := loadCompose(t, tt.env...)
			for _, app := range appServices {
				env := service(t, p, app.name).Environment
				for name := range env {
					if !known[name] {
						t.Errorf("%s: environment sets %s, which internal/config does not read", app.name, name)
					}
				}
				for name, want := range tt.want {
					got, ok := env[name]
					if !ok {
						t.Errorf("%s: %s is not passed at all", app.name, name)
						continue
					}
					if deref(got) != deref(want) || (got == nil) != (want == nil) {
						t.Errorf("%s: %s = %v, want %v", app.name, name, deref(got), deref(want))
					}
				}
				if _, err := config.Load(func(k string) string { return deref(env[k]) }); err != nil {
					t.Errorf("%s: the binaries would refuse this environment: %v", app.name, err)
				}
			}
		})
	}
}

// TestDockerfiles checks what compose.yaml and the Kubernetes manifests rely
// on: a static, non-root, shell-less image that exposes the service's port
// and carries the health probe compose runs.
func TestDockerfiles(t *testing.T) {
	for _, app := range appServices {
		t.Run(app.name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(repoRoot, app.dockerfile))
			if err != nil {
				t.Fatal(err)
			}
			df := string(b)
			for _, want := range []string{
				"FROM --platform=$BUILDPLATFORM golang:1.26 AS build",
				"CGO_ENABLED=0",
				"-trimpath",
				"./services/" + app.name,
				"./deploy/cmd/healthprobe",
				"FROM gcr.io/distroless/static:nonroot",
				"USER 65532:65532",
				"EXPOSE " + app.port,
				`ENTRYPOINT ["/usr/local/bin/` + app.name + `"]`,
			} {
				if !strings.Contains(df, want) {
					t.Errorf("%s lacks %q", app.dockerfile, want)
				}
			}
		})
	}
}

// TestEnvExample fails when a variable is added to internal/config but not
// to .env.example, or when its default there is not the code's default.
func TestEnvExample(t *testing.T) {
	f, err := os.Open(filepath.Join(repoRoot, ".env.example"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	defaults := config.Defaults()
	seen := map[string]bool{}
	line := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		name, value, ok := strings.Cut(text, "=")
		if !ok {
			t.Errorf(".env.example:%d: %q is not NAME=value", line, text)
			continue
		}
		if seen[name] {
			t.Errorf(".env.example:%d: %s is listed twice", line, name)
		}
		seen[name] = true
		want, known := defaults[name]
		switch {
		case !known:
			t.Errorf(".env.example:%d: %s is not a variable internal/config reads", line, name)
		case value != want:
			t.Errorf(".env.example:%d: %s=%q, but the default is %q", line, name, value, want)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, key := range config.Keys() {
		if !seen[key] {
			t.Errorf(".env.example does not list %s", key)
		}
	}
}

// referenceRow matches a variable's row: | `NAME` | default | allowed | what |.
var referenceRow = regexp.MustCompile("^\\|\\s*`([A-Z][A-Z0-9_]*)`\\s*\\|([^|]*)\\|([^|]*)\\|([^|]*)\\|")

// TestConfigurationReference fails when a variable is added to
// internal/config but not documented, or documented with the wrong default.
func TestConfigurationReference(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "CONFIGURATION_REFERENCE.md"))
	if err != nil {
		t.Fatal(err)
	}
	defaults := config.Defaults()
	rows := map[string]int{}
	for i, text := range strings.Split(string(b), "\n") {
		m := referenceRow.FindStringSubmatch(text)
		if m == nil {
			continue
		}
		name, def, allowed, what := m[1], strings.TrimSpace(m[2]), strings.TrimSpace(m[3]), strings.TrimSpace(m[4])
		rows[name]++
		want, known := defaults[name]
		if !known {
			t.Errorf("CONFIGURATION_REFERENCE.md:%d: %s is not a variable internal/config reads", i+1, name)
			continue
		}
		wantCell := "`" + want + "`"
		if want == "" {
			wantCell = "(empty)"
		}
		if def != wantCell {
			t.Errorf("CONFIGURATION_REFERENCE.md:%d: %s default is %s, want %s", i+1, name, def, wantCell)
		}
		if allowed == "" || what == "" {
			t.Errorf("CONFIGURATION_REFERENCE.md:%d: %s needs its allowed values and a description", i+1, name)
		}
	}
	for _, key := range config.Keys() {
		switch rows[key] {
		case 0:
			t.Errorf("CONFIGURATION_REFERENCE.md has no table row for %s", key)
		case 1:
		default:
			t.Errorf("CONFIGURATION_REFERENCE.md documents %s %d times", key, rows[key])
		}
	}
}

func keySet() map[string]bool {
	known := map[string]bool{}
	for _, k := range config.Keys() {
		known[k] = true
	}
	return known
}

func hasNamedVolume(s types.ServiceConfig, target string) bool {
	return slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeVolume && v.Target == target
	})
}

func mustPort(t *testing.T, p string) uint32 {
	t.Helper()
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		t.Fatalf("bad port %q: %v", p, err)
	}
	return uint32(n)
}

func ptr(s string) *string { return &s }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// sortedKeys makes failure messages stable.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
