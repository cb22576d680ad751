// Package deploy holds nomnom's deployment files' checks: compose.yaml, the
// Dockerfiles, .env.example, CONFIGURATION_REFERENCE.md and the Kubernetes
// manifests under deploy/k8s are tested here against the configuration the
// binaries actually read (internal/config), so none of them can drift from it.
package deploy
