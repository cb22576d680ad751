package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"strings"

	"connectrpc.com/connect"

	ingestv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
)

func runSend(ctx context.Context, args []string, e env) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var cf clientFlags
	cf.register(fs, e)
	entity := fs.String("entity", "", "entity of every record (order, customer, product); inferred from the keys when empty")
	source := fs.String("source", "nomnom-cli", "source recorded with each message")
	key := fs.String("idempotency-key", "", "idempotency key (only with a single record)")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: nomnom send [flags] [JSON ...]   (no JSON arguments: read NDJSON from stdin)")
		fs.PrintDefaults()
	}
	records, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	hint := envelope.Entity("")
	if *entity != "" {
		if hint, err = envelope.ParseEntity(*entity); err != nil {
			return err
		}
	}
	var lines []string
	if len(records) > 0 {
		lines = records
	} else {
		sc := bufio.NewScanner(e.stdin)
		sc.Buffer(make([]byte, 0, 64*1024), 16<<20)
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" {
				lines = append(lines, l)
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("read stdin: %w", err)
		}
	}
	if len(lines) == 0 {
		return fmt.Errorf("nothing to send: give JSON records as arguments or NDJSON on stdin")
	}
	if *key != "" && len(lines) != 1 {
		return fmt.Errorf("--idempotency-key needs exactly one record, got %d", len(lines))
	}
	req := &ingestv1.IngestBatchRequest{}
	for _, l := range lines {
		req.Records = append(req.Records, &ingestv1.Record{
			Kind:           &ingestv1.Record_Raw{Raw: &ingestv1.RawRecord{EntityType: hint.Proto(), Json: l}},
			Source:         *source,
			IdempotencyKey: *key,
		})
	}
	resp, err := cf.clients().ingest.IngestBatch(ctx, connect.NewRequest(req))
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(e.stdout, resp.Msg)
	}
	tw := table(e.stdout)
	fmt.Fprintln(tw, "#\tMESSAGE ID\tENTITY\tRESULT")
	for _, r := range resp.Msg.GetResults() {
		result := "accepted"
		switch {
		case r.GetError() != "":
			result = "error: " + r.GetError()
		case r.GetDuplicate():
			result = "duplicate of an earlier call"
		}
		entity, _ := envelope.FromProto(r.GetEntityType())
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", r.GetIndex()+1, orDash(r.GetMessageId()), orDash(string(entity)), result)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%d accepted, %d failed\n", resp.Msg.GetAccepted(), resp.Msg.GetFailed())
	if resp.Msg.GetFailed() > 0 {
		return fmt.Errorf("%d of %d records were refused", resp.Msg.GetFailed(), len(lines))
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
