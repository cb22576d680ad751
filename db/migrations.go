// Package db embeds the goose migrations so every binary carries its schema.
package db

import "embed"

// Migrations holds migrations/NNNN_*.sql.
//
//go:embed migrations/*.sql
var Migrations embed.FS
