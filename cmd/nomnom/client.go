package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/nomnomhq/nomnom/gen/go/nomnom/deadletter/v1/deadletterv1connect"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/ingest/v1/ingestv1connect"
	"github.com/nomnomhq/nomnom/gen/go/nomnom/status/v1/statusv1connect"
)

// clientFlags are the flags every client command shares.
type clientFlags struct {
	url      string
	token    string
	envToken string
	json     bool
}

func (c *clientFlags) register(fs *flag.FlagSet, e env) {
	def := e.getenv("NOMNOM_URL")
	if def == "" {
		def = "http://localhost:8080"
	}
	fs.StringVar(&c.url, "url", def, "ingest service URL (NOMNOM_URL)")
	// The environment is read after parsing (see clients), so help texts
	// never print the token as a default.
	fs.StringVar(&c.token, "token", "", "bearer token (default $NOMNOM_TOKEN)")
	c.envToken = e.getenv("NOMNOM_TOKEN")
	fs.BoolVar(&c.json, "json", false, "print JSON instead of a table")
}

// clients are the RPC clients of the ingest port, speaking the Connect
// protocol over HTTP/1.1 (or HTTP/2 when the server offers it).
type clients struct {
	ingest     ingestv1connect.IngestServiceClient
	status     statusv1connect.StatusServiceClient
	deadLetter deadletterv1connect.DeadLetterServiceClient
}

func (c *clientFlags) clients() clients {
	httpClient := &http.Client{Timeout: 0} // streaming calls are bounded by ctx
	base := strings.TrimRight(c.url, "/")
	token := c.token
	if token == "" {
		token = c.envToken
	}
	opts := []connect.ClientOption{connect.WithInterceptors(bearerInterceptor(token))}
	return clients{
		ingest:     ingestv1connect.NewIngestServiceClient(httpClient, base, opts...),
		status:     statusv1connect.NewStatusServiceClient(httpClient, base, opts...),
		deadLetter: deadletterv1connect.NewDeadLetterServiceClient(httpClient, base, opts...),
	}
}

// bearerInterceptor adds the Authorization header to every call.
type bearerInterceptor string

func (t bearerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if t != "" {
			req.Header().Set("Authorization", "Bearer "+string(t))
		}
		return next(ctx, req)
	}
}

func (t bearerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if t != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+string(t))
		}
		return conn
	}
}

func (t bearerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

var jsonOut = protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := jsonOut.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

func formatTime(t interface{ AsTime() time.Time }, valid bool) string {
	if !valid {
		return "-"
	}
	return t.AsTime().UTC().Format(time.RFC3339Nano)
}

// parseFlags parses flags that may come before or after positional
// arguments ("dlq replay ID --dry-run"), returning the positionals.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			// The flag package has printed the problem and the usage.
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, errUsage
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
