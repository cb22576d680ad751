package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	deadletterv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/deadletter/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
)

const dlqUsage = `usage: nomnom dlq <subcommand> [flags]

  list                      list dead letters (--entity, --class, --since, --limit)
  show ID                   show one dead letter with its payload and error
  replay ID... | --all      republish to the ingest stream (--payload for a fixed record, --dry-run)
  purge ID... | --all       delete dead letters for good (--dry-run)

The DeadLetterService needs an admin token (--token or NOMNOM_TOKEN) unless
the server has no ADMIN_TOKENS and you call it from its own host.
`

func runDLQ(ctx context.Context, args []string, e env) error {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, dlqUsage)
		return errUsage
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(e.stdout, dlqUsage)
		return errHelp
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("dlq "+sub, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var cf clientFlags
	cf.register(fs, e)
	entity, class, since := new(string), new(string), new(time.Duration)
	if sub != "show" {
		fs.StringVar(entity, "entity", "", "only this entity (order, customer, product)")
		fs.StringVar(class, "class", "", "only this error class (permanent, transient, poison)")
		fs.DurationVar(since, "since", 0, "only entries dead-lettered within this long (e.g. 1h)")
	}
	var limit *int
	var all, dryRun *bool
	var payload, payloadFile *string
	switch sub {
	case "list":
		limit = fs.Int("limit", 100, "entries per page; all pages are printed")
	case "show":
	case "replay":
		all = fs.Bool("all", false, "replay every entry matching --entity/--class/--since")
		dryRun = fs.Bool("dry-run", false, "only report what would be replayed")
		payload = fs.String("payload", "", "corrected JSON record to send instead of the stored one (one ID only)")
		payloadFile = fs.String("payload-file", "", "read the corrected JSON record from this file")
	case "purge":
		all = fs.Bool("all", false, "purge every entry matching --entity/--class/--since")
		dryRun = fs.Bool("dry-run", false, "only report what would be purged")
	default:
		fmt.Fprintf(e.stderr, "unknown subcommand %q\n\n%s", sub, dlqUsage)
		return errUsage
	}
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: nomnom dlq %s [flags]%s\n", sub, map[string]string{
			"show": " MESSAGE_ID", "replay": " MESSAGE_ID... | --all", "purge": " MESSAGE_ID... | --all",
		}[sub])
		fs.PrintDefaults()
	}
	ids, err := parseFlags(fs, rest)
	if err != nil {
		return err
	}
	filter, ferr := dlqFilter(*entity, *class, *since)
	if ferr != nil {
		return ferr
	}
	c := cf.clients().deadLetter
	switch sub {
	case "list":
		return dlqList(ctx, c, filter, int32(*limit), cf.json, e)
	case "show":
		if len(ids) != 1 {
			fs.Usage()
			return errUsage
		}
		resp, err := c.GetDeadLetter(ctx, connect.NewRequest(&deadletterv1.GetDeadLetterRequest{MessageId: ids[0]}))
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(e.stdout, resp.Msg.GetDeadLetter())
		}
		return showDeadLetter(e, resp.Msg.GetDeadLetter())
	case "replay":
		req := &deadletterv1.ReplayDeadLettersRequest{MessageIds: ids, DryRun: *dryRun, CorrectedPayload: *payload}
		if *payloadFile != "" {
			b, err := os.ReadFile(*payloadFile)
			if err != nil {
				return err
			}
			req.CorrectedPayload = string(b)
		}
		if err := selection(len(req.MessageIds), *all, filter); err != nil {
			return err
		}
		if *all {
			req.Filter, req.All = filter, true
		}
		resp, err := c.ReplayDeadLetters(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(e.stdout, resp.Msg)
		}
		tw := table(e.stdout)
		fmt.Fprintln(tw, "MESSAGE ID\tREPLAY\tRESULT")
		for _, o := range resp.Msg.GetOutcomes() {
			result := "replayed"
			if resp.Msg.GetDryRun() {
				result = "would replay"
			}
			if o.GetError() != "" {
				result = "refused: " + o.GetError()
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\n", o.GetMessageId(), o.GetReplayCount(), result)
		}
		tw.Flush()
		fmt.Fprintf(e.stdout, "%d replayed, %d refused%s\n", resp.Msg.GetReplayed(), resp.Msg.GetFailed(), dryNote(resp.Msg.GetDryRun()))
		if resp.Msg.GetFailed() > 0 {
			return fmt.Errorf("%d dead letters were not replayed", resp.Msg.GetFailed())
		}
		return nil
	default: // purge
		req := &deadletterv1.PurgeDeadLettersRequest{MessageIds: ids, DryRun: *dryRun}
		if err := selection(len(req.MessageIds), *all, filter); err != nil {
			return err
		}
		if *all {
			req.Filter, req.All = filter, true
		}
		resp, err := c.PurgeDeadLetters(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(e.stdout, resp.Msg)
		}
		for _, id := range resp.Msg.GetMessageIds() {
			fmt.Fprintln(e.stdout, id)
		}
		fmt.Fprintf(e.stdout, "%d purged%s\n", resp.Msg.GetPurged(), dryNote(resp.Msg.GetDryRun()))
		return nil
	}
}

// selection insists on explicit ids or --all, so a bare "purge" never
// empties the queue by accident.
func selection(ids int, all bool, f *deadletterv1.DeadLetterFilter) error {
	switch {
	case ids > 0 && all:
		return errors.New("give message ids or --all, not both")
	case ids == 0 && !all:
		return errors.New("give message ids, or --all (with --entity/--class/--since to narrow it)")
	}
	return nil
}

func dryNote(dry bool) string {
	if dry {
		return " (dry run: nothing changed)"
	}
	return ""
}

func dlqFilter(entity, class string, since time.Duration) (*deadletterv1.DeadLetterFilter, error) {
	f := &deadletterv1.DeadLetterFilter{}
	if entity != "" {
		e, err := envelope.ParseEntity(entity)
		if err != nil {
			return nil, err
		}
		f.EntityType = e.Proto()
	}
	if class != "" {
		v, ok := deadletterv1.ErrorClass_value["ERROR_CLASS_"+strings.ToUpper(class)]
		if !ok || v == 0 {
			return nil, fmt.Errorf("unknown --class %q: want permanent, transient or poison", class)
		}
		f.ErrorClass = deadletterv1.ErrorClass(v)
	}
	if since > 0 {
		f.FailedAfter = timestamppb.New(time.Now().Add(-since))
	}
	return f, nil
}

func className(c deadletterv1.ErrorClass) string {
	return strings.ToLower(strings.TrimPrefix(c.String(), "ERROR_CLASS_"))
}

func dlqList(ctx context.Context, c interface {
	ListDeadLetters(context.Context, *connect.Request[deadletterv1.ListDeadLettersRequest]) (*connect.Response[deadletterv1.ListDeadLettersResponse], error)
}, f *deadletterv1.DeadLetterFilter, limit int32, asJSON bool, e env) error {
	req := &deadletterv1.ListDeadLettersRequest{Filter: f, PageSize: limit}
	all := &deadletterv1.ListDeadLettersResponse{}
	for {
		resp, err := c.ListDeadLetters(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		all.DeadLetters = append(all.DeadLetters, resp.Msg.GetDeadLetters()...)
		if resp.Msg.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.Msg.GetNextPageToken()
	}
	if asJSON {
		return printJSON(e.stdout, all)
	}
	tw := table(e.stdout)
	fmt.Fprintln(tw, "MESSAGE ID\tENTITY\tCLASS\tATTEMPTS\tREPLAYS\tFAILED AT\tERROR")
	for _, d := range all.GetDeadLetters() {
		entity, _ := envelope.FromProto(d.GetEntityType())
		errText := d.GetError()
		if len(errText) > 80 {
			errText = errText[:77] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", orDash(d.GetMessageId()), orDash(string(entity)),
			className(d.GetErrorClass()), d.GetAttempts(), d.GetReplayCount(),
			d.GetFailedAt().AsTime().UTC().Format(time.RFC3339), errText)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%d dead letters\n", len(all.GetDeadLetters()))
	return nil
}

func showDeadLetter(e env, d *deadletterv1.DeadLetter) error {
	entity, _ := envelope.FromProto(d.GetEntityType())
	tw := table(e.stdout)
	fmt.Fprintf(tw, "message_id\t%s\n", d.GetMessageId())
	fmt.Fprintf(tw, "entity_type\t%s\n", entity)
	fmt.Fprintf(tw, "error_class\t%s\n", className(d.GetErrorClass()))
	fmt.Fprintf(tw, "error\t%s\n", d.GetError())
	fmt.Fprintf(tw, "attempts\t%d\n", d.GetAttempts())
	fmt.Fprintf(tw, "replay_count\t%d\n", d.GetReplayCount())
	fmt.Fprintf(tw, "original\t%s seq %d\n", d.GetOriginalSubject(), d.GetOriginalSequence())
	fmt.Fprintf(tw, "dlq_sequence\t%d\n", d.GetDlqSequence())
	fmt.Fprintf(tw, "received_at\t%s\n", formatTime(d.GetReceivedAt(), d.GetReceivedAt() != nil))
	fmt.Fprintf(tw, "failed_at\t%s\n", formatTime(d.GetFailedAt(), d.GetFailedAt() != nil))
	fmt.Fprintf(tw, "source\t%s\n", orDash(d.GetSource()))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "payload:\n%s\n", d.GetPayload())
	return nil
}
