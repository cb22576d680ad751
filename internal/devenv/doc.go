// Package devenv finds or starts the dependencies `make run` needs on a
// developer's machine: PostgreSQL (an existing server or a private cluster)
// and an embedded JetStream server. Production never uses it; there the
// services get their URLs from configuration.
package devenv
