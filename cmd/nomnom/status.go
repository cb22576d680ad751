package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"connectrpc.com/connect"

	statusv1 "github.com/nomnomhq/nomnom/gen/go/nomnom/status/v1"
	"github.com/nomnomhq/nomnom/internal/envelope"
)

func runStatus(ctx context.Context, args []string, e env) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var cf clientFlags
	cf.register(fs, e)
	watch := fs.Bool("watch", false, "follow the status until it is completed or dlq")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: nomnom status [flags] MESSAGE_ID")
		fs.PrintDefaults()
	}
	ids, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ids) != 1 {
		fs.Usage()
		return errUsage
	}
	id := ids[0]
	c := cf.clients()
	if !*watch {
		resp, err := c.status.GetStatus(ctx, connect.NewRequest(&statusv1.GetStatusRequest{MessageId: id}))
		if err != nil {
			return err
		}
		return showStatus(e.stdout, resp.Msg.GetStatus(), cf.json)
	}
	stream, err := c.status.WatchStatus(ctx, connect.NewRequest(&statusv1.WatchStatusRequest{MessageId: id}))
	if err != nil {
		return err
	}
	defer stream.Close()
	for stream.Receive() {
		if err := showStatus(e.stdout, stream.Msg().GetStatus(), cf.json); err != nil {
			return err
		}
	}
	return stream.Err()
}

func statusName(s statusv1.Status) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "STATUS_"))
}

func showStatus(w io.Writer, st *statusv1.MessageStatus, asJSON bool) error {
	if asJSON {
		return printJSON(w, st)
	}
	entity, _ := envelope.FromProto(st.GetEntityType())
	tw := table(w)
	fmt.Fprintf(tw, "message_id\t%s\n", st.GetMessageId())
	fmt.Fprintf(tw, "entity_type\t%s\n", entity)
	fmt.Fprintf(tw, "status\t%s\n", statusName(st.GetStatus()))
	fmt.Fprintf(tw, "received_at\t%s\n", formatTime(st.GetReceivedAt(), st.GetReceivedAt() != nil))
	fmt.Fprintf(tw, "processed_at\t%s\n", formatTime(st.GetProcessedAt(), st.GetProcessedAt() != nil))
	fmt.Fprintf(tw, "retry_count\t%d\n", st.GetRetryCount())
	fmt.Fprintf(tw, "replay_count\t%d\n", st.GetReplayCount())
	fmt.Fprintf(tw, "error_message\t%s\n", orDash(st.GetErrorMessage()))
	for _, a := range st.GetAttempts() {
		fmt.Fprintf(tw, "failed attempt %d (replay %d)\t%s %s: %s\n", a.GetAttempt(), a.GetGeneration(),
			formatTime(a.GetFailedAt(), true), a.GetErrorClass(), a.GetError())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w)
	return err
}
