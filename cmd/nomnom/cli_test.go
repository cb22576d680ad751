package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/nomnomhq/nomnom/internal/testutil"
)

// cliTimeout bounds one CLI call, including a --watch until the worker has
// stored or dead-lettered the message.
const cliTimeout = 15 * time.Second

var uuidRE = `[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`

// cli runs the CLI in-process, as main does, against the ingest service at
// url, and returns what it printed.
type cli struct {
	t   *testing.T
	url string
}

func (c cli) run(stdin string, args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), cliTimeout)
	defer cancel()
	getenv := func(k string) string {
		if k == "NOMNOM_URL" {
			return c.url
		}
		return ""
	}
	var out, errOut bytes.Buffer
	err = run(ctx, args, getenv, strings.NewReader(stdin), &out, &errOut)
	return out.String(), errOut.String(), err
}

// ok runs the CLI and fails the test unless it succeeds.
func (c cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.run("", args...)
	if err != nil {
		c.t.Fatalf("nomnom %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// send sends one record and returns its message id from the table.
func (c cli) send(record string) string {
	c.t.Helper()
	out := c.ok("send", record)
	m := regexp.MustCompile(`(?m)^1\s+(` + uuidRE + `)\s+\w+\s+accepted$`).FindStringSubmatch(out)
	if m == nil {
		c.t.Fatalf("send printed no accepted row:\n%s", out)
	}
	return m[1]
}

// watch follows a message with status --watch until the server ends the
// stream, and returns the last status printed.
func (c cli) watch(id string) string {
	c.t.Helper()
	out := c.ok("status", "--watch", id)
	all := regexp.MustCompile(`(?m)^status\s+(\w+)$`).FindAllStringSubmatch(out, -1)
	if len(all) == 0 {
		c.t.Fatalf("status --watch printed no status:\n%s", out)
	}
	return all[len(all)-1][1]
}

func mustMatch(t *testing.T, what, pattern, out string) {
	t.Helper()
	if !regexp.MustCompile(pattern).MatchString(out) {
		t.Errorf("%s: output does not match %s:\n%s", what, pattern, out)
	}
}

// TestCLI drives the client commands against a live ingest service and
// worker: send, status and every dlq subcommand, as a user would.
func TestCLI(t *testing.T) {
	t.Parallel()
	c := cli{t: t, url: "http://" + startPipeline(t)}

	var orderID string
	t.Run("send arguments", func(t *testing.T) {
		c := cli{t: t, url: c.url}
		out := c.ok("send", `{"order_key":"CLI-1","customer_key":"C-1"}`)
		mustMatch(t, "send", `(?m)^#\s+MESSAGE ID\s+ENTITY\s+RESULT$`, out)
		mustMatch(t, "send", `(?m)^1\s+`+uuidRE+`\s+order\s+accepted$`, out)
		mustMatch(t, "send", `(?m)^1 accepted, 0 failed$`, out)
		orderID = regexp.MustCompile(uuidRE).FindString(out)
	})
	if orderID == "" {
		t.Fatal("no message id to follow")
	}

	t.Run("send NDJSON with a bad line", func(t *testing.T) {
		stdin := `{"order_key":"CLI-2","customer_key":"C-2"}` + "\n[1,2]\n\n" + `{"customer_key":"CLI-C1"}` + "\n"
		out, _, err := cli{t: t, url: c.url}.run(stdin, "send")
		if err == nil || !strings.Contains(err.Error(), "1 of 3 records were refused") {
			t.Errorf("send error = %v, want 1 of 3 records refused", err)
		}
		mustMatch(t, "send", `(?m)^1\s+`+uuidRE+`\s+order\s+accepted$`, out)
		mustMatch(t, "send", `(?m)^2\s+-\s+-\s+error: .*not a JSON object`, out)
		mustMatch(t, "send", `(?m)^3\s+`+uuidRE+`\s+customer\s+accepted$`, out)
		mustMatch(t, "send", `(?m)^2 accepted, 1 failed$`, out)
	})

	t.Run("status", func(t *testing.T) {
		c := cli{t: t, url: c.url}
		completed := regexp.MustCompile(`(?m)^status\s+completed$`)
		var out string
		testutil.WaitFor(t, cliTimeout, func() (bool, error) {
			out = c.ok("status", orderID)
			return completed.MatchString(out), fmt.Errorf("status %s printed:\n%s", orderID, out)
		})
		mustMatch(t, "status", `(?m)^message_id\s+`+orderID+`$`, out)
		mustMatch(t, "status", `(?m)^entity_type\s+order$`, out)
		mustMatch(t, "status", `(?m)^error_message\s+-$`, out)

		var st map[string]any
		if err := json.Unmarshal([]byte(c.ok("status", "--json", orderID)), &st); err != nil {
			t.Fatalf("status --json is not JSON: %v", err)
		}
		if st["message_id"] != orderID || st["status"] != "STATUS_COMPLETED" || st["entity_type"] != "ENTITY_TYPE_ORDER" {
			t.Errorf("status --json = %v, want %s completed order", st, orderID)
		}
	})

	t.Run("status --watch", func(t *testing.T) {
		c := cli{t: t, url: c.url}
		id := c.send(`{"part_key":"CLI-P1","name":"bolt"}`)
		if got := c.watch(id); got != "completed" {
			t.Errorf("status --watch ended with %q, want completed", got)
		}
	})

	// A record the worker refuses, and a second one for purge.
	const bad = `{"order_key":"CLI-DLQ","customer_key":null}`
	deadID := c.send(bad)
	if got := c.watch(deadID); got != "dlq" {
		t.Fatalf("%s ended %s, want dlq", deadID, got)
	}

	t.Run("dlq list", func(t *testing.T) {
		c := cli{t: t, url: c.url}
		out := c.ok("dlq", "list")
		mustMatch(t, "dlq list", `(?m)^MESSAGE ID\s+ENTITY\s+CLASS\s+ATTEMPTS\s+REPLAYS\s+FAILED AT\s+ERROR$`, out)
		mustMatch(t, "dlq list", `(?m)^`+deadID+`\s+order\s+permanent\s+1\s+0\s+\S+\s+.*customer_key`, out)
		mustMatch(t, "dlq list", `(?m)^1 dead letters$`, out)

		var list struct {
			DeadLetters []struct {
				MessageID  string `json:"message_id"`
				EntityType string `json:"entity_type"`
				ErrorClass string `json:"error_class"`
				Attempts   int    `json:"attempts"`
				Payload    string `json:"payload"`
			} `json:"dead_letters"`
		}
		if err := json.Unmarshal([]byte(c.ok("dlq", "list", "--json")), &list); err != nil {
			t.Fatalf("dlq list --json is not JSON: %v", err)
		}
		if d := list.DeadLetters; len(d) != 1 || d[0].MessageID != deadID || d[0].EntityType != "ENTITY_TYPE_ORDER" ||
			d[0].ErrorClass != "ERROR_CLASS_PERMANENT" || d[0].Attempts != 1 || d[0].Payload != "" {
			t.Errorf("dlq list --json = %+v, want %s as a permanent order failure without payload", d, deadID)
		}
		if out := c.ok("dlq", "list", "--entity", "customer"); !strings.Contains(out, "0 dead letters") {
			t.Errorf("dlq list --entity customer:\n%s\nwant none", out)
		}
	})

	t.Run("dlq show", func(t *testing.T) {
		c := cli{t: t, url: c.url}
		out := c.ok("dlq", "show", deadID)
		mustMatch(t, "dlq show", `(?m)^message_id\s+`+deadID+`$`, out)
		mustMatch(t, "dlq show", `(?m)^error_class\s+permanent$`, out)
		mustMatch(t, "dlq show", `(?m)^original\s+messages\.ingest\.order seq \d+$`, out)
		if !strings.Contains(out, "payload:\n"+bad+"\n") {
			t.Errorf("dlq show does not print the payload %s:\n%s", bad, out)
		}
		_, _, err := c.run("", "dlq", "show", uuid.NewString())
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("dlq show of an unknown id: error = %v, want NotFound", err)
		}
	})

	t.Run("dlq purge --all --dry-run", func(t *testing.T) {
		c := cli{t: t, url: c.url}
		out := c.ok("dlq", "purge", "--all", "--dry-run")
		mustMatch(t, "purge dry run", `(?m)^`+deadID+`$`, out)
		mustMatch(t, "purge dry run", `(?m)^1 purged \(dry run: nothing changed\)$`, out)
		mustMatch(t, "dlq list after a dry run", `(?m)^1 dead letters$`, c.ok("dlq", "list"))
	})

	t.Run("dlq replay with a corrected payload", func(t *testing.T) {
		c := cli{t: t, url: c.url}
		out := c.ok("dlq", "replay", deadID, "--payload", `{"order_key":"CLI-DLQ","customer_key":"C-9"}`)
		mustMatch(t, "dlq replay", `(?m)^`+deadID+`\s+1\s+replayed$`, out)
		mustMatch(t, "dlq replay", `(?m)^1 replayed, 0 refused$`, out)
		if got := c.watch(deadID); got != "completed" {
			t.Errorf("replayed message ended %s, want completed", got)
		}
		mustMatch(t, "status after replay", `(?m)^replay_count\s+1$`, c.ok("status", deadID))
		mustMatch(t, "dlq list after replay", `(?m)^0 dead letters$`, c.ok("dlq", "list"))
	})

	t.Run("dlq purge by id", func(t *testing.T) {
		c := cli{t: t, url: c.url}
		id := c.send(`{"customer_key":"CLI-BAD","nation_key":-1}`)
		if got := c.watch(id); got != "dlq" {
			t.Fatalf("%s ended %s, want dlq", id, got)
		}
		out := c.ok("dlq", "purge", id)
		mustMatch(t, "dlq purge", `(?m)^`+id+`$`, out)
		mustMatch(t, "dlq purge", `(?m)^1 purged$`, out)
		mustMatch(t, "dlq list after purge", `(?m)^0 dead letters$`, c.ok("dlq", "list"))
	})
}

// TestCLIUsageErrors checks the mistakes the CLI catches before calling the
// server (whose URL here answers nothing).
// TestCLIHelp: -h on any command shows its usage and succeeds.
func TestCLIHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"status", "-h"}, {"send", "--help"}, {"dlq", "--help"}, {"dlq", "list", "-h"}, {"bench", "-h"}, {"dev", "-h"}} {
		stdout, stderr, err := cli{t: t, url: "http://127.0.0.1:1"}.run("", args...)
		if err != nil && !errors.Is(err, errHelp) {
			t.Errorf("nomnom %s: %v, want success", strings.Join(args, " "), err)
		}
		if !strings.Contains(strings.ToLower(stdout+stderr), "usage") {
			t.Errorf("nomnom %s printed no usage:\n%s%s", strings.Join(args, " "), stdout, stderr)
		}
	}
}

func TestCLIUsageErrors(t *testing.T) {
	t.Parallel()
	c := cli{t: t, url: "http://127.0.0.1:1"}
	id := uuid.NewString()
	tests := []struct {
		name    string
		args    []string
		usage   bool   // want errUsage (exit status 2)
		wantErr string // else an error containing this
	}{
		{"no command", nil, true, ""},
		{"unknown command", []string{"frobnicate"}, true, ""},
		{"status without an id", []string{"status"}, true, ""},
		{"dlq without a subcommand", []string{"dlq"}, true, ""},
		{"dlq unknown subcommand", []string{"dlq", "empty"}, true, ""},
		{"dlq replay without ids or --all", []string{"dlq", "replay"}, false, "--all"},
		{"dlq replay with ids and --all", []string{"dlq", "replay", id, "--all"}, false, "not both"},
		{"dlq purge without ids or --all", []string{"dlq", "purge"}, false, "--all"},
		{"dlq list with an unknown class", []string{"dlq", "list", "--class", "bad"}, false, "--class"},
		{"send nothing", []string{"send"}, false, "nothing to send"},
		{"dlq show without an id", []string{"dlq", "show"}, true, ""},
		{"status with an unknown flag", []string{"status", "--bogus", id}, true, ""},
		{"dlq show with a filter flag", []string{"dlq", "show", "--entity", "order", id}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, err := cli{t: t, url: c.url}.run("", tt.args...)
			switch {
			case tt.usage && !errors.Is(err, errUsage):
				t.Errorf("error = %v, want errUsage", err)
			case tt.usage && strings.Count(stderr, "usage") != 1:
				t.Errorf("stderr does not show the usage exactly once:\n%s", stderr)
			case !tt.usage && (err == nil || errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error = %v, want one naming %q", err, tt.wantErr)
			}
		})
	}
}

// TestBench runs a small `nomnom bench` end to end: every measurement must
// complete and be printed with a rate. Given the test server, the bench
// creates a database of its own there and drops it.
func TestBench(t *testing.T) {
	dbURL := testutil.ServerURL()
	getenv := func(k string) string {
		if k == "DATABASE_URL" {
			return dbURL
		}
		return ""
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	args := []string{"bench", "-records", "600", "-batch", "100", "-worker-batch", "100", "-ready-calls", "50"}
	if err := run(ctx, args, getenv, strings.NewReader(""), &out, &errOut); err != nil {
		t.Fatalf("nomnom bench: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	var left int
	if err := testutil.NewDatabase(t).QueryRow(ctx, `SELECT count(*) FROM pg_database WHERE datname LIKE 'nomnom\_bench\_%'`).Scan(&left); err != nil || left != 0 {
		t.Errorf("%d bench databases left behind (%v), want 0", left, err)
	}
	for _, line := range []string{
		`JetStream async publish \(baseline\)\s+\d+ records/s`,
		`PostgreSQL unnest upsert, 100/statement \(baseline\)\s+\d+ records/s`,
		`the pipeline's database work alone, 2 connections\s+\d+ records/s\s+\d+\.\d\d×`,
		`pipeline end to end \(accepted and stored\)\s+\d+ records/s\s+\d+\.\d\d×`,
		`\s+CPU of this process per record .*\s+[\d.]+[µm]?s`,
		`worker alone, draining a backlog\s+\d+ records/s`,
		`GET /ready latency \(50 calls\)\s+p50 [\d.]+[µm]?s, p99 [\d.]+[µm]?s`,
	} {
		mustMatch(t, "bench output", `(?m)^`+line, out.String())
	}
}

// TestDLQScripts runs the curl-and-jq scripts as an operator would:
// inspect a dead letter, refuse a bad option, dry-run a replay, then replay
// with a corrected record from a file.
func TestDLQScripts(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the DLQ scripts need %s: %v", tool, err)
		}
	}
	t.Parallel()
	url := "http://" + startPipeline(t)
	c := cli{t: t, url: url}
	id := c.send(`{"order_key":"SCRIPT-1","customer_key":null}`)
	if got := c.watch(id); got != "dlq" {
		t.Fatalf("status %s, want dlq", got)
	}
	script := func(name string, args ...string) (string, error) {
		cmd := exec.CommandContext(t.Context(), "bash", append([]string{filepath.Join("..", "..", "scripts", name)}, args...)...)
		cmd.Env = append(os.Environ(), "NOMNOM_URL="+url)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := script("inspect-dlq.sh", id); err != nil || !strings.Contains(out, "customer_key") {
		t.Errorf("inspect-dlq.sh %s: %v\n%s", id, err, out)
	}
	if out, err := script("reprocess-dlq.sh", "--entity", "widget"); err == nil || !strings.Contains(out, "--entity must be") {
		t.Errorf("reprocess-dlq.sh --entity widget: %v, want refused\n%s", err, out)
	}
	if out, err := script("reprocess-dlq.sh", "--dry-run", "--entity", "order"); err != nil || !strings.Contains(out, id+"\twould replay") {
		t.Errorf("reprocess-dlq.sh --dry-run: %v\n%s", err, out)
	}
	fixed := filepath.Join(t.TempDir(), "fixed.json")
	if err := os.WriteFile(fixed, []byte(`{"order_key":"SCRIPT-1","customer_key":"C-1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := script("reprocess-dlq.sh", "--payload-file", fixed, id); err != nil || !strings.Contains(out, "1 replayed") {
		t.Errorf("reprocess-dlq.sh --payload-file: %v\n%s", err, out)
	}
	if got := c.watch(id); got != "completed" {
		t.Errorf("status after the corrected replay: %s, want completed", got)
	}
}
