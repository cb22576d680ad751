package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/nomnomhq/nomnom/gen/go/dbgen"
	"github.com/nomnomhq/nomnom/internal/config"
	"github.com/nomnomhq/nomnom/internal/devenv"
	"github.com/nomnomhq/nomnom/internal/envelope"
	"github.com/nomnomhq/nomnom/internal/store"
	"github.com/nomnomhq/nomnom/services/ingest/ingest"
	"github.com/nomnomhq/nomnom/services/worker/worker"
)

// benchOptions are the knobs of `nomnom bench`.
type benchOptions struct {
	records           int
	batch             int
	clients           int
	workerBatch       int
	workerConcurrency int
	readyCalls        int
}

// runBench measures, in one run on this machine: the raw JetStream publish
// rate and the raw PostgreSQL multi-row upsert rate (the two ceilings), then
// the whole pipeline (HTTP → JetStream → worker → PostgreSQL, with status
// tracking and validation) and /ready latency. Results are printed with the
// pipeline's throughput as a ratio of the slower ceiling.
func runBench(ctx context.Context, args []string, e env) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	var o benchOptions
	fs.IntVar(&o.records, "records", 50000, "records per measurement")
	fs.IntVar(&o.batch, "batch", 500, "records per NDJSON request, JetStream publish window and upsert statement")
	fs.IntVar(&o.clients, "clients", 4, "concurrent HTTP clients")
	fs.IntVar(&o.workerBatch, "worker-batch", 500, "WORKER_BATCH_SIZE for the pipeline run")
	fs.IntVar(&o.workerConcurrency, "worker-concurrency", 2, "WORKER_CONCURRENCY for the pipeline run")
	fs.IntVar(&o.readyCalls, "ready-calls", 5000, "sequential GET /ready calls for its latency")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: nomnom bench [flags]")
		fs.PrintDefaults()
	}
	if _, err := parseFlags(fs, args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	quiet := slog.New(slog.DiscardHandler)
	if e.getenv("NOMNOM_BENCH_DEBUG") != "" {
		quiet = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	out := e.stdout

	tmp, err := os.MkdirTemp("", "nomnom-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	natsSrv, err := devenv.StartNATS(ctx, tmp, quiet)
	if err != nil {
		return err
	}
	defer natsSrv.Shutdown()
	// A database of its own, also on DATABASE_URL's server: the bench
	// truncates the tables it fills.
	dbName := fmt.Sprintf("nomnom_bench_%d", os.Getpid())
	serverURL := e.getenv("DATABASE_URL")
	if serverURL != "" {
		u, err := url.Parse(serverURL)
		if err != nil || u.Scheme == "" {
			return errors.New("DATABASE_URL: nomnom bench needs a postgres:// URL, to create its own database on that server")
		}
		u.Path = "/" + dbName
		serverURL = u.String()
	}
	pg, err := devenv.EnsurePostgres(ctx, devenv.PostgresOptions{URL: serverURL, DataDir: ".data/postgres", Database: dbName, Logger: quiet})
	if err != nil {
		return err
	}
	defer pg.Stop()
	defer dropDatabase(pg.URL(), dbName)
	fmt.Fprintf(out, "nomnom bench: %d records of ~%d bytes; %s; embedded JetStream\n\n", o.records, len(benchRecord(0)), pg.Where())

	pubRate, err := benchPublish(ctx, natsSrv.URL(), o)
	if err != nil {
		return fmt.Errorf("jetstream baseline: %w", err)
	}
	upsertRate, err := benchUpsert(ctx, pg.URL(), o)
	if err != nil {
		return fmt.Errorf("postgres baseline: %w", err)
	}
	dbWorkRate, err := benchDatabaseWork(ctx, pg.URL(), o)
	if err != nil {
		return fmt.Errorf("database work: %w", err)
	}
	res, err := benchPipeline(ctx, pg.URL(), natsSrv.URL(), o, quiet)
	if err != nil {
		return fmt.Errorf("pipeline: %w", err)
	}
	ceiling := min(pubRate, upsertRate)
	tw := table(out)
	fmt.Fprintln(tw, "measurement\tresult\tvs slower baseline")
	fmt.Fprintf(tw, "JetStream async publish (baseline)\t%.0f records/s\t\n", pubRate)
	fmt.Fprintf(tw, "PostgreSQL unnest upsert, %d/statement (baseline)\t%.0f records/s\t\n", o.batch, upsertRate)
	fmt.Fprintf(tw, "the pipeline's database work alone, %d connections\t%.0f records/s\t%.2f×\n", o.workerConcurrency, dbWorkRate, dbWorkRate/ceiling)
	fmt.Fprintf(tw, "pipeline end to end (accepted and stored)\t%.0f records/s\t%.2f×\n", res.throughput, res.throughput/ceiling)
	fmt.Fprintf(tw, "  CPU of this process per record (services, JetStream, load)\t%s\t\n", res.cpuPerRecord)
	fmt.Fprintf(tw, "pipeline ingest only (202 answered)\t%.0f records/s\t%.2f×\n", res.ingestRate, res.ingestRate/ceiling)
	fmt.Fprintf(tw, "worker alone, draining a backlog\t%.0f records/s\t%.2f×\n", res.drainRate, res.drainRate/ceiling)
	fmt.Fprintf(tw, "loaded: ingest call latency, %d records/call\tp50 %s, p99 %s\t\n", o.batch, res.callP50, res.callP99)
	fmt.Fprintf(tw, "loaded: accepted → completed latency\tp50 %s, p99 %s\t\n", res.e2eP50, res.e2eP99)
	fmt.Fprintf(tw, "light load: POST /ingest/message, one at a time\tp50 %s, p99 %s\t\n", res.singleP50, res.singleP99)
	fmt.Fprintf(tw, "light load: accepted → completed\tp50 %s, p99 %s\t\n", res.singleE2EP50, res.singleE2EP99)
	fmt.Fprintf(tw, "GET /ready latency (%d calls)\tp50 %s, p99 %s\t\n", o.readyCalls, res.readyP50, res.readyP99)
	return tw.Flush()
}

// benchRecord is a ~300-byte order, like the performance facts in DESIGN.md.
func benchRecord(i int) []byte {
	return fmt.Appendf(nil, `{"order_key":"B-%09d","customer_key":"C-%06d","order_status":"O","total_price":%d.25,"order_date":"2026-12-04","order_priority":"1-URGENT","clerk":"Clerk#000000951","ship_priority":0,"comment":"bench","line_items":[{"line_number":1,"part_key":"P-%06d","quantity":17,"extended_price":21168.23,"discount":0.04,"tax":0.02,"ship_date":"2026-12-10","ship_mode":"AIR"}]}`,
		i, i%100000, 1000+i%5000, i%20000)
}

func benchPublish(ctx context.Context, url string, o benchOptions) (float64, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage}); err != nil {
		return 0, err
	}
	defer js.DeleteStream(context.WithoutCancel(ctx), "BENCH")
	payload := benchRecord(0)
	start := time.Now()
	for i := 0; i < o.records; i += o.batch {
		for j := i; j < min(i+o.batch, o.records); j++ {
			if _, err := js.PublishAsync("bench.order", payload); err != nil {
				return 0, err
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return float64(o.records) / time.Since(start).Seconds(), nil
}

func benchUpsert(ctx context.Context, url string, o benchOptions) (float64, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	if err := store.Migrate(ctx, pool, nil); err != nil {
		return 0, err
	}
	q := dbgen.New(pool)
	now := pgtype.Timestamptz{Time: time.Now(), Valid: true}
	start := time.Now()
	for i := 0; i < o.records; i += o.batch {
		var p dbgen.OrderUpsertManyParams
		for j := i; j < min(i+o.batch, o.records); j++ {
			p.OrderKeys = append(p.OrderKeys, fmt.Sprintf("U-%09d", j))
			p.CustomerKeys = append(p.CustomerKeys, "C-1")
			p.OrderStatuses = append(p.OrderStatuses, "O")
			p.TotalPrices = append(p.TotalPrices, 100.25)
			p.OrderDates = append(p.OrderDates, "2026-12-04")
			p.OrderPriorities = append(p.OrderPriorities, "1-URGENT")
			p.Clerks = append(p.Clerks, "Clerk#1")
			p.ShipPriorities = append(p.ShipPriorities, 0)
			p.Comments = append(p.Comments, "bench")
			p.ReceivedAts = append(p.ReceivedAts, now)
			p.MessageIds = append(p.MessageIds, pgtype.UUID{Bytes: uuid.New(), Valid: true})
		}
		if _, err := q.OrderUpsertMany(ctx, p); err != nil {
			return 0, err
		}
	}
	rate := float64(o.records) / time.Since(start).Seconds()
	_, err = pool.Exec(ctx, "TRUNCATE orders CASCADE")
	return rate, err
}

// benchDatabaseWork runs, with nothing else going on, the statements the
// pipeline needs for each record: ingest's 'accepted' row, the worker's
// 'processing' row, and the store transaction (order, line items,
// 'completed'), in batches of o.workerBatch on o.workerConcurrency
// connections, as the worker runs them. It bounds what the pipeline can
// reach on this PostgreSQL.
func benchDatabaseWork(ctx context.Context, url string, o benchOptions) (float64, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	st := store.New(pool)
	now := time.Now()
	batches := make(chan []store.Item, o.records/o.workerBatch+1)
	for i := 0; i < o.records; i += o.workerBatch {
		var items []store.Item
		for j := i; j < min(i+o.workerBatch, o.records); j++ {
			rec, err := envelope.Decode(envelope.Order, benchRecord(j))
			if err != nil {
				return 0, err
			}
			items = append(items, store.Item{MessageID: uuid.Must(uuid.NewV7()), Entity: envelope.Order, ReceivedAt: now, Attempt: 1, Record: rec})
		}
		batches <- items
	}
	close(batches)
	var g errgroup.Group
	start := time.Now()
	for range o.workerConcurrency {
		g.Go(func() error {
			for items := range batches {
				for _, status := range []store.Status{store.StatusAccepted, store.StatusProcessing} {
					writes := make([]store.StatusWrite, len(items))
					for k, it := range items {
						writes[k] = store.StatusWrite{MessageID: it.MessageID, Entity: it.Entity, Status: status, ReceivedAt: it.ReceivedAt, Attempt: it.Attempt}
						if status == store.StatusAccepted {
							writes[k].Attempt = 0
						}
					}
					if err := st.WriteStatuses(ctx, writes); err != nil {
						return err
					}
				}
				if _, err := st.StoreRecords(ctx, items); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	rate := float64(o.records) / time.Since(start).Seconds()
	_, err = pool.Exec(ctx, "TRUNCATE message_status, orders, order_line_items")
	return rate, err
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type pipelineResult struct {
	throughput, ingestRate, drainRate float64
	cpuPerRecord                      time.Duration
	callP50, callP99, e2eP50, e2eP99  time.Duration
	readyP50, readyP99                time.Duration
	singleP50, singleP99              time.Duration
	singleE2EP50, singleE2EP99        time.Duration
}

func benchPipeline(ctx context.Context, dbURL, natsURL string, o benchOptions, logger *slog.Logger) (pipelineResult, error) {
	var res pipelineResult
	env := map[string]string{
		"DATABASE_URL": dbURL, "NATS_URL": natsURL, "HTTP_ADDR": "127.0.0.1:0", "WORKER_HTTP_ADDR": "127.0.0.1:0",
		"WORKER_BATCH_SIZE": fmt.Sprint(o.workerBatch), "WORKER_CONCURRENCY": fmt.Sprint(o.workerConcurrency),
		"INGEST_MAX_BATCH_BYTES": fmt.Sprint(64 << 20),
	}
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		return res, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	addr := make(chan string, 1)
	var g errgroup.Group
	g.Go(func() error { return ingest.Run(runCtx, cfg, logger, func(a string) { addr <- a }) })
	defer g.Wait()
	startWorker := func() (stopWorker func() error) {
		wctx, cancel := context.WithCancel(runCtx)
		done := make(chan error, 1)
		go func() { done <- worker.Run(wctx, cfg, logger, nil) }()
		return func() error { cancel(); return <-done }
	}
	stopWorker := startWorker()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case <-ctx.Done():
		return res, ctx.Err()
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.clients}}
	waitCompleted := func(want int) error {
		for {
			var done int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM message_status WHERE status = 'completed'").Scan(&done); err != nil {
				return err
			}
			if done >= want {
				return nil
			}
			if !sleepCtx(ctx, 20*time.Millisecond) {
				return ctx.Err()
			}
		}
	}

	start, cpu := time.Now(), processCPU()
	calls, err := sendBatches(ctx, client, base, o, 0)
	if err != nil {
		return res, err
	}
	res.ingestRate = float64(o.records) / time.Since(start).Seconds()
	if err := waitCompleted(o.records); err != nil {
		return res, err
	}
	res.throughput = float64(o.records) / time.Since(start).Seconds()
	res.cpuPerRecord = readable((processCPU() - cpu) / time.Duration(o.records))
	res.callP50, res.callP99 = percentiles(calls)

	var p50, p99 float64
	if err := pool.QueryRow(ctx, `SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d)
		FROM (SELECT extract(epoch FROM processed_at - received_at) AS d FROM message_status) s`).Scan(&p50, &p99); err != nil {
		return res, err
	}
	res.e2eP50, res.e2eP99 = seconds(p50), seconds(p99)

	// Light load: one record at a time, each waited for, for the latency a
	// single producer sees.
	var single []time.Duration
	var singleIDs []string
	for i := range 200 {
		t := time.Now()
		resp, err := client.Post(base+"/ingest/message", "application/json", bytes.NewReader(benchRecord(o.records+i)))
		if err != nil {
			return res, err
		}
		var body struct {
			MessageID string `json:"message_id"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusAccepted {
			return res, fmt.Errorf("single ingest answered %d: %v", resp.StatusCode, err)
		}
		single = append(single, time.Since(t))
		singleIDs = append(singleIDs, body.MessageID)
	}
	for {
		var done int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM message_status WHERE status = 'completed' AND message_id = ANY($1::uuid[])", singleIDs).Scan(&done); err != nil {
			return res, err
		}
		if done == len(singleIDs) {
			break
		}
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return res, ctx.Err()
		}
	}
	res.singleP50, res.singleP99 = percentiles(single)
	if err := pool.QueryRow(ctx, `SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d)
		FROM (SELECT extract(epoch FROM processed_at - received_at) AS d FROM message_status WHERE message_id = ANY($1::uuid[])) s`, singleIDs).Scan(&p50, &p99); err != nil {
		return res, err
	}
	res.singleE2EP50, res.singleE2EP99 = seconds(p50), seconds(p99)

	ready := make([]time.Duration, 0, o.readyCalls)
	for range o.readyCalls {
		t := time.Now()
		resp, err := client.Get(base + "/ready")
		if err != nil {
			return res, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return res, errors.New("/ready did not answer 200")
		}
		ready = append(ready, time.Since(t))
	}
	res.readyP50, res.readyP99 = percentiles(ready)

	// A backlog: queue records with no worker running, then time one worker
	// process draining them alone.
	if err := stopWorker(); err != nil {
		return res, err
	}
	var before int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM message_status WHERE status = 'completed'").Scan(&before); err != nil {
		return res, err
	}
	if _, err := sendBatches(ctx, client, base, o, o.records+1000); err != nil {
		return res, err
	}
	start = time.Now()
	stopWorker = startWorker()
	if err := waitCompleted(before + o.records); err != nil {
		return res, err
	}
	res.drainRate = float64(o.records) / time.Since(start).Seconds()
	if err := stopWorker(); err != nil {
		return res, err
	}
	stop()
	return res, g.Wait()
}

func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	return readable(ds[len(ds)/2]), readable(ds[min(len(ds)-1, len(ds)*99/100)])
}

func seconds(f float64) time.Duration { return readable(time.Duration(f * float64(time.Second))) }

// readable keeps about three significant digits.
func readable(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func dropDatabase(url, name string) {
	if !strings.HasPrefix(name, "nomnom_bench_") {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin := strings.Replace(url, "/"+name, "/postgres", 1)
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

// sendBatches posts o.records records, numbered from first, as NDJSON
// batches from o.clients concurrent clients, and returns each call's latency.
func sendBatches(ctx context.Context, client *http.Client, base string, o benchOptions, first int) ([]time.Duration, error) {
	bodies := make(chan []byte, o.clients)
	go func() {
		defer close(bodies)
		for i := 0; i < o.records; i += o.batch {
			var b bytes.Buffer
			for j := i; j < min(i+o.batch, o.records); j++ {
				b.Write(benchRecord(first + j))
				b.WriteByte('\n')
			}
			select {
			case bodies <- b.Bytes():
			case <-ctx.Done():
				return
			}
		}
	}()
	var mu sync.Mutex
	var calls []time.Duration
	var senders errgroup.Group
	for range o.clients {
		senders.Go(func() error {
			for body := range bodies {
				t := time.Now()
				resp, err := client.Post(base+"/ingest/batch", "application/x-ndjson", bytes.NewReader(body))
				if err != nil {
					return err
				}
				msg, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted || bytes.Contains(msg, []byte(`"status":"partial"`)) {
					return fmt.Errorf("ingest answered %d: %.300s", resp.StatusCode, msg)
				}
				mu.Lock()
				calls = append(calls, time.Since(t))
				mu.Unlock()
			}
			return nil
		})
	}
	err := senders.Wait()
	return calls, err
}
