package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/nomnomhq/nomnom/internal/config"
)

const k8sDir = "k8s"

// manifest is one YAML document under deploy/k8s, decoded just enough to
// check it; the kind-specific part stays a node until a test needs it.
type manifest struct {
	file       string
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Data       map[string]any `yaml:"data"`
	StringData map[string]any `yaml:"stringData"`
	Spec       yaml.Node      `yaml:"spec"`
}

type kustomization struct {
	Namespace string   `yaml:"namespace"`
	Resources []string `yaml:"resources"`
	Images    []struct {
		Name string `yaml:"name"`
	} `yaml:"images"`
}

type deploymentSpec struct {
	Replicas *int `yaml:"replicas"`
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	Template struct {
		Metadata struct {
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
		Spec podSpec `yaml:"spec"`
	} `yaml:"template"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot *bool `yaml:"runAsNonRoot"`
	} `yaml:"securityContext"`
	Containers []container `yaml:"containers"`
}

type container struct {
	Name  string `yaml:"name"`
	Image string `yaml:"image"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
		SecretRef *struct {
			Name string `yaml:"name"`
		} `yaml:"secretRef"`
	} `yaml:"envFrom"`
	StartupProbe   *probe `yaml:"startupProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Lifecycle      struct {
		PreStop *struct {
			Sleep *struct {
				Seconds int `yaml:"seconds"`
			} `yaml:"sleep"`
		} `yaml:"preStop"`
	} `yaml:"lifecycle"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext struct {
		RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
		ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
	} `yaml:"securityContext"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
	GRPC *struct {
		Port    int    `yaml:"port"`
		Service string `yaml:"service"`
	} `yaml:"grpc"`
	TCPSocket any `yaml:"tcpSocket"`
	Exec      any `yaml:"exec"`
}

type serviceSpec struct {
	Selector map[string]string `yaml:"selector"`
	Ports    []struct {
		Name       string `yaml:"name"`
		Port       int    `yaml:"port"`
		TargetPort any    `yaml:"targetPort"`
	} `yaml:"ports"`
}

type pdbSpec struct {
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
}

type scaledObjectSpec struct {
	ScaleTargetRef struct {
		Name string `yaml:"name"`
	} `yaml:"scaleTargetRef"`
	MinReplicaCount *int `yaml:"minReplicaCount"`
	MaxReplicaCount *int `yaml:"maxReplicaCount"`
	Triggers        []struct {
		Type     string            `yaml:"type"`
		Metadata map[string]string `yaml:"metadata"`
	} `yaml:"triggers"`
}

// natsValues is the part of the NATS Helm chart's values nomnom depends on.
type natsValues struct {
	FullnameOverride string `yaml:"fullnameOverride"`
	Config           struct {
		Cluster struct {
			Enabled  bool `yaml:"enabled"`
			Replicas int  `yaml:"replicas"`
		} `yaml:"cluster"`
		JetStream struct {
			Enabled   bool `yaml:"enabled"`
			FileStore struct {
				Enabled bool `yaml:"enabled"`
			} `yaml:"fileStore"`
		} `yaml:"jetstream"`
		Monitor struct {
			Enabled bool `yaml:"enabled"`
			Port    int  `yaml:"port"`
		} `yaml:"monitor"`
	} `yaml:"config"`
}

// cluster is everything under deploy/k8s, parsed.
type cluster struct {
	kustomization kustomization
	manifests     []manifest
	nats          natsValues
	natsFile      string
}

// loadCluster parses every YAML file under deploy/k8s. Documents with a kind
// are Kubernetes objects; the kustomization and the NATS Helm values are
// recognised by name.
func loadCluster(t *testing.T) cluster {
	t.Helper()
	var c cluster
	err := filepath.WalkDir(k8sDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ext := filepath.Ext(path)
		if ext != ".yaml" && ext != ".yml" {
			return nil
		}
		rel, _ := filepath.Rel(k8sDir, path)
		rel = filepath.ToSlash(rel)
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		switch {
		case rel == "kustomization.yaml":
			return yaml.Unmarshal(b, &c.kustomization)
		case strings.HasPrefix(rel, "nats/values"):
			c.natsFile = rel
			return yaml.Unmarshal(b, &c.nats)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var m manifest
			err := dec.Decode(&m)
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
			if m.APIVersion == "" || m.Kind == "" || m.Metadata.Name == "" {
				return fmt.Errorf("%s: a document without apiVersion, kind or metadata.name", rel)
			}
			m.file = rel
			c.manifests = append(c.manifests, m)
		}
	})
	if err != nil {
		t.Fatalf("parse deploy/k8s: %v", err)
	}
	return c
}

func (c cluster) all(kind string) []manifest {
	var out []manifest
	for _, m := range c.manifests {
		if m.Kind == kind {
			out = append(out, m)
		}
	}
	return out
}

func (c cluster) one(t *testing.T, kind, name string) manifest {
	t.Helper()
	for _, m := range c.all(kind) {
		if m.Metadata.Name == name {
			return m
		}
	}
	t.Fatalf("deploy/k8s has no %s %q", kind, name)
	return manifest{}
}

func decodeSpec[T any](t *testing.T, m manifest) T {
	t.Helper()
	var spec T
	if err := m.Spec.Decode(&spec); err != nil {
		t.Fatalf("%s: %s %s: %v", m.file, m.Kind, m.Metadata.Name, err)
	}
	return spec
}

// configMap returns the nomnom ConfigMap's data, checking that every value is
// a string (Kubernetes rejects numbers and booleans there).
func (c cluster) configMap(t *testing.T) map[string]string {
	t.Helper()
	return stringMap(t, c.one(t, "ConfigMap", "nomnom-config"), "data")
}

func stringMap(t *testing.T, m manifest, field string) map[string]string {
	t.Helper()
	raw := m.Data
	if field == "stringData" {
		raw = m.StringData
	}
	out := map[string]string{}
	for k, v := range raw {
		s, ok := v.(string)
		if !ok {
			t.Errorf("%s: %s %s: %s.%s is %T, quote it: Kubernetes accepts only strings", m.file, m.Kind, m.Metadata.Name, field, k, v)
			continue
		}
		out[k] = s
	}
	return out
}

func TestK8sKustomization(t *testing.T) {
	c := loadCluster(t)
	k := c.kustomization
	if k.Namespace != "nomnom" {
		t.Errorf("kustomization namespace = %q, want nomnom", k.Namespace)
	}

	listed := map[string]bool{}
	for _, r := range k.Resources {
		listed[r] = true
		if _, err := os.Stat(filepath.Join(k8sDir, r)); err != nil {
			t.Errorf("kustomization lists %s: %v", r, err)
		}
	}
	images := map[string]bool{}
	for _, img := range k.Images {
		images[img.Name] = true
	}
	for _, m := range c.manifests {
		if !listed[m.file] {
			t.Errorf("%s (%s %s) is not in kustomization.yaml's resources", m.file, m.Kind, m.Metadata.Name)
		}
		if m.Kind != "Namespace" && m.Metadata.Namespace != k.Namespace {
			t.Errorf("%s: %s %s is in namespace %q, want %q", m.file, m.Kind, m.Metadata.Name, m.Metadata.Namespace, k.Namespace)
		}
	}
	c.one(t, "Namespace", k.Namespace)

	for _, m := range c.all("Deployment") {
		for _, ctr := range decodeSpec[deploymentSpec](t, m).Template.Spec.Containers {
			if !images[ctr.Image] {
				t.Errorf("%s: container %s uses image %q, which kustomization.yaml's images do not map to a registry", m.file, ctr.Name, ctr.Image)
			}
		}
	}
}

func TestK8sConfig(t *testing.T) {
	c := loadCluster(t)
	known := keySet()
	cm := c.configMap(t)
	secret := stringMap(t, c.one(t, "Secret", "nomnom-secrets"), "stringData")

	for _, src := range []struct {
		name string
		data map[string]string
	}{{"ConfigMap nomnom-config", cm}, {"Secret nomnom-secrets", secret}} {
		for _, k := range sortedKeys(src.data) {
			if !known[k] {
				t.Errorf("%s sets %s, which internal/config does not read", src.name, k)
			}
		}
	}
	for k := range secret {
		if _, dup := cm[k]; dup {
			t.Errorf("%s is in both the ConfigMap and the Secret; which one wins depends on envFrom order", k)
		}
	}
	if cm["NATS_REPLICAS"] != "3" {
		t.Errorf("ConfigMap NATS_REPLICAS = %q, want 3: production durability comes from three replicas", cm["NATS_REPLICAS"])
	}

	env := map[string]string{}
	for k, v := range cm {
		env[k] = v
	}
	for k, v := range secret {
		env[k] = v
	}
	if _, err := config.Load(func(k string) string { return env[k] }); err != nil {
		t.Errorf("the binaries would refuse the ConfigMap and Secret: %v", err)
	}
}

func TestK8sDeployments(t *testing.T) {
	c := loadCluster(t)
	cm := c.configMap(t)
	shutdown, err := time.ParseDuration(cm["SHUTDOWN_TIMEOUT"])
	if err != nil {
		t.Fatalf("ConfigMap SHUTDOWN_TIMEOUT: %v", err)
	}

	tests := []struct {
		name     string
		addrKey  string
		port     int
		replicas *int // nil: left to the autoscaler
		wantGRPC bool // a native gRPC probe on grpc.health.v1
	}{
		{name: "ingest", addrKey: "HTTP_ADDR", port: 8080, replicas: intPtr(2), wantGRPC: true},
		{name: "worker", addrKey: "WORKER_HTTP_ADDR", port: 8081},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := c.one(t, "Deployment", tt.name)
			d := decodeSpec[deploymentSpec](t, m)

			if !labelsMatch(d.Selector.MatchLabels, d.Template.Metadata.Labels) {
				t.Errorf("selector %v does not match the pod labels %v", d.Selector.MatchLabels, d.Template.Metadata.Labels)
			}
			if (d.Replicas == nil) != (tt.replicas == nil) || d.Replicas != nil && *d.Replicas != *tt.replicas {
				t.Errorf("replicas = %v, want %v", fmtPtr(d.Replicas), fmtPtr(tt.replicas))
			}
			if len(d.Template.Spec.Containers) != 1 {
				t.Fatalf("%d containers, want 1", len(d.Template.Spec.Containers))
			}
			ctr := d.Template.Spec.Containers[0]

			_, addrPort, err := net.SplitHostPort(cm[tt.addrKey])
			if err != nil || addrPort != strconv.Itoa(tt.port) {
				t.Errorf("ConfigMap %s = %q, want port %d", tt.addrKey, cm[tt.addrKey], tt.port)
			}
			if len(ctr.Ports) != 1 || ctr.Ports[0].ContainerPort != tt.port {
				t.Fatalf("container ports = %+v, want just %d", ctr.Ports, tt.port)
			}

			probes := []struct {
				kind string
				p    *probe
				path string // "" : any real route, or a gRPC probe
			}{
				{"startupProbe", ctr.StartupProbe, ""},
				{"readinessProbe", ctr.ReadinessProbe, "/ready"},
				{"livenessProbe", ctr.LivenessProbe, "/live"},
			}
			grpcProbes := 0
			for _, pr := range probes {
				if pr.p == nil {
					t.Errorf("no %s", pr.kind)
					continue
				}
				handlers := 0
				for _, set := range []bool{pr.p.HTTPGet != nil, pr.p.GRPC != nil, pr.p.TCPSocket != nil, pr.p.Exec != nil} {
					if set {
						handlers++
					}
				}
				if handlers != 1 {
					t.Errorf("%s has %d handlers; Kubernetes allows exactly one", pr.kind, handlers)
				}
				switch {
				case pr.p.HTTPGet != nil:
					path := pr.p.HTTPGet.Path
					if !slices.Contains(routes, path) {
						t.Errorf("%s probes %s, which the service does not serve (routes: %v)", pr.kind, path, routes)
					}
					if pr.path != "" && path != pr.path {
						t.Errorf("%s probes %s, want %s", pr.kind, path, pr.path)
					}
					if got := resolvePort(ctr, pr.p.HTTPGet.Port); got != tt.port {
						t.Errorf("%s port %v resolves to %d, want %d", pr.kind, pr.p.HTTPGet.Port, got, tt.port)
					}
				case pr.p.GRPC != nil:
					grpcProbes++
					if pr.path != "" {
						t.Errorf("%s must be an httpGet on %s", pr.kind, pr.path)
					}
					if pr.p.GRPC.Port != tt.port {
						t.Errorf("%s gRPC port %d, want %d", pr.kind, pr.p.GRPC.Port, tt.port)
					}
				default:
					t.Errorf("%s is neither httpGet nor grpc", pr.kind)
				}
			}
			if tt.wantGRPC && grpcProbes == 0 {
				t.Error("no native gRPC probe on grpc.health.v1")
			}

			var preStop time.Duration
			if ps := ctr.Lifecycle.PreStop; ps != nil && ps.Sleep != nil {
				preStop = time.Duration(ps.Sleep.Seconds) * time.Second
			}
			grace := d.Template.Spec.TerminationGracePeriodSeconds
			if grace == nil || time.Duration(*grace)*time.Second <= preStop+shutdown {
				t.Errorf("terminationGracePeriodSeconds = %v, want more than preStop %v + SHUTDOWN_TIMEOUT %v", fmtPtr(grace), preStop, shutdown)
			}

			for _, res := range []string{"cpu", "memory"} {
				if ctr.Resources.Requests[res] == "" || ctr.Resources.Limits[res] == "" {
					t.Errorf("resources for %s: requests %q, limits %q; want both", res, ctr.Resources.Requests[res], ctr.Resources.Limits[res])
				}
			}

			sc := ctr.SecurityContext
			if !isTrue(sc.RunAsNonRoot) && !isTrue(d.Template.Spec.SecurityContext.RunAsNonRoot) {
				t.Error("runAsNonRoot is not set")
			}
			if !isTrue(sc.ReadOnlyRootFilesystem) {
				t.Error("readOnlyRootFilesystem is not set")
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Error("allowPrivilegeEscalation is not false")
			}

			var fromCM, fromSecret bool
			for _, ef := range ctr.EnvFrom {
				if ef.ConfigMapRef != nil {
					c.one(t, "ConfigMap", ef.ConfigMapRef.Name)
					fromCM = true
				}
				if ef.SecretRef != nil {
					c.one(t, "Secret", ef.SecretRef.Name)
					fromSecret = true
				}
			}
			if !fromCM || !fromSecret {
				t.Errorf("envFrom = %+v, want the ConfigMap and the Secret", ctr.EnvFrom)
			}
		})
	}
}

// TestK8sSelectors checks that every Service and PodDisruptionBudget selects
// a Deployment's pods, and that Service target ports exist on them.
func TestK8sSelectors(t *testing.T) {
	c := loadCluster(t)
	deployments := map[string]deploymentSpec{}
	for _, m := range c.all("Deployment") {
		deployments[m.Metadata.Name] = decodeSpec[deploymentSpec](t, m)
	}
	selected := func(sel map[string]string) (deploymentSpec, bool) {
		for _, name := range sortedKeys(deployments) {
			if d := deployments[name]; len(sel) > 0 && labelsMatch(sel, d.Template.Metadata.Labels) {
				return d, true
			}
		}
		return deploymentSpec{}, false
	}

	services := c.all("Service")
	if len(services) == 0 {
		t.Error("no Services")
	}
	for _, m := range services {
		s := decodeSpec[serviceSpec](t, m)
		d, ok := selected(s.Selector)
		if !ok {
			t.Errorf("%s: Service %s selects no Deployment's pods (%v)", m.file, m.Metadata.Name, s.Selector)
			continue
		}
		for _, p := range s.Ports {
			if resolvePort(d.Template.Spec.Containers[0], p.TargetPort) == 0 {
				t.Errorf("%s: Service %s targets port %v, which the pods do not expose", m.file, m.Metadata.Name, p.TargetPort)
			}
		}
	}

	pdbs := c.all("PodDisruptionBudget")
	if len(pdbs) == 0 {
		t.Error("no PodDisruptionBudget")
	}
	for _, m := range pdbs {
		if _, ok := selected(decodeSpec[pdbSpec](t, m).Selector.MatchLabels); !ok {
			t.Errorf("%s: PodDisruptionBudget %s selects no Deployment's pods", m.file, m.Metadata.Name)
		}
	}
}

// TestK8sWorkerAutoscaling checks the KEDA trigger watches the stream and
// consumer the worker actually uses, on the NATS cluster the services use.
func TestK8sWorkerAutoscaling(t *testing.T) {
	c := loadCluster(t)
	cm := c.configMap(t)
	so := decodeSpec[scaledObjectSpec](t, c.one(t, "ScaledObject", "worker"))

	c.one(t, "Deployment", so.ScaleTargetRef.Name)
	if so.ScaleTargetRef.Name != "worker" {
		t.Errorf("scaleTargetRef = %s, want worker", so.ScaleTargetRef.Name)
	}
	if so.MinReplicaCount == nil || *so.MinReplicaCount < 1 {
		t.Errorf("minReplicaCount = %v, want at least 1", fmtPtr(so.MinReplicaCount))
	}
	if so.MaxReplicaCount == nil || *so.MaxReplicaCount < *so.MinReplicaCount {
		t.Errorf("maxReplicaCount = %v", fmtPtr(so.MaxReplicaCount))
	}
	if len(so.Triggers) != 1 || so.Triggers[0].Type != "nats-jetstream" {
		t.Fatalf("triggers = %+v, want one nats-jetstream trigger", so.Triggers)
	}
	meta := so.Triggers[0].Metadata

	tests := []struct{ field, want string }{
		{"stream", cm["NATS_STREAM"]},
		{"consumer", cm["NATS_CONSUMER"]},
		{"account", "$G"},
	}
	for _, tt := range tests {
		if meta[tt.field] != tt.want {
			t.Errorf("trigger %s = %q, want %q", tt.field, meta[tt.field], tt.want)
		}
	}
	if n, err := strconv.Atoi(meta["lagThreshold"]); err != nil || n < 1 {
		t.Errorf("trigger lagThreshold = %q, want a positive integer", meta["lagThreshold"])
	}

	// KEDA reaches the consumer leader as <server>.<endpoint host>, which
	// only the chart's headless Service resolves; NATS_URL uses the client
	// Service of the same release and namespace.
	host, port, err := net.SplitHostPort(meta["natsServerMonitoringEndpoint"])
	if err != nil {
		t.Fatalf("natsServerMonitoringEndpoint: %v", err)
	}
	nats := c.nats
	if port != strconv.Itoa(nats.Config.Monitor.Port) {
		t.Errorf("natsServerMonitoringEndpoint port %s, want the monitoring port %d from %s", port, nats.Config.Monitor.Port, c.natsFile)
	}
	u, err := url.Parse(cm["NATS_URL"])
	if err != nil {
		t.Fatalf("ConfigMap NATS_URL: %v", err)
	}
	svc, ns, _ := strings.Cut(u.Hostname(), ".")
	headless, headlessNS, _ := strings.Cut(host, ".")
	if svc != nats.FullnameOverride || headless != nats.FullnameOverride+"-headless" || ns != headlessNS {
		t.Errorf("NATS_URL host %s and KEDA endpoint %s do not name the %q release's Services in one namespace", u.Hostname(), host, nats.FullnameOverride)
	}
}

// TestNATSProductionValues checks the Helm values give JetStream the three
// servers NATS_REPLICAS=3 needs.
func TestNATSProductionValues(t *testing.T) {
	c := loadCluster(t)
	if c.natsFile == "" {
		t.Fatal("no deploy/k8s/nats/values*.yaml")
	}
	v := c.nats.Config
	replicas, _ := strconv.Atoi(c.configMap(t)["NATS_REPLICAS"])
	switch {
	case !v.Cluster.Enabled:
		t.Error("config.cluster.enabled is not true")
	case v.Cluster.Replicas < 3 || v.Cluster.Replicas < replicas:
		t.Errorf("config.cluster.replicas = %d, want at least 3 and at least NATS_REPLICAS (%d)", v.Cluster.Replicas, replicas)
	}
	if !v.JetStream.Enabled || !v.JetStream.FileStore.Enabled {
		t.Errorf("JetStream with a file store is not enabled: %+v", v.JetStream)
	}
	if !v.Monitor.Enabled {
		t.Error("the monitoring port KEDA reads is disabled")
	}
}

// resolvePort maps a probe or Service port (number or name) to the
// container port it reaches, or 0.
func resolvePort(ctr container, port any) int {
	for _, p := range ctr.Ports {
		switch v := port.(type) {
		case int:
			if v == p.ContainerPort {
				return p.ContainerPort
			}
		case string:
			if v == p.Name {
				return p.ContainerPort
			}
		}
	}
	return 0
}

func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

func isTrue(b *bool) bool { return b != nil && *b }

func intPtr(n int) *int { return &n }

func fmtPtr(n *int) string {
	if n == nil {
		return "unset"
	}
	return strconv.Itoa(*n)
}
