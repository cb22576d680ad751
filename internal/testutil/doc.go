// Package testutil gives tests real dependencies: a fresh, migrated
// PostgreSQL database and an embedded JetStream server per call, plus WaitFor
// for asserting on things that happen asynchronously. There are no mocks
// here on purpose; see DESIGN.md "Running".
package testutil
