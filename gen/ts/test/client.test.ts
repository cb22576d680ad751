// End-to-end test of the generated client against a live ingest server and
// worker: NOMNOM_URL=http://127.0.0.1:8080 npm test (cmd/nomnom's
// TestTypeScriptClient starts both and runs this for `make test`).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";

import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";

import {
  EntityType,
  IngestService,
  OrderSchema,
  Status,
  StatusService,
  type MessageStatus,
} from "../index.js";

const baseUrl = process.env["NOMNOM_URL"];
if (!baseUrl) {
  throw new Error(
    "NOMNOM_URL is not set: point it at a running ingest service, e.g. " +
      "`make run` and then `NOMNOM_URL=http://127.0.0.1:8080 npm test`, " +
      "or run `go test ./cmd/nomnom -run TestTypeScriptClient`, which starts one",
  );
}

// How long an order may take from ingest to 'completed'. The worker stores a
// record in milliseconds; the margin is for small, busy CI machines.
const completionTimeoutMs = 20_000;

const transports: Array<[name: string, make: () => Transport]> = [
  ["connect-http1.1", () => createConnectTransport({ baseUrl, httpVersion: "1.1" })],
  ["connect-http2", () => createConnectTransport({ baseUrl, httpVersion: "2" })],
  // gRPC always runs over HTTP/2 (here h2c), so the transport has no httpVersion.
  ["grpc-http2", () => createGrpcTransport({ baseUrl })],
];

for (const [name, make] of transports) {
  describe(`over ${name}`, () => {
    const transport = make();
    const ingest = createClient(IngestService, transport);
    const statuses = createClient(StatusService, transport);

    test("ingests a typed order, watches it complete and reads the status back", async () => {
      // Unique per run and transport, so reruns against one database never
      // collide with an earlier order.
      const orderKey = `ts-${name}-${randomUUID()}`;
      const order = create(OrderSchema, {
        orderKey,
        customerKey: "C-ts-1",
        orderStatus: "O",
        totalPrice: 173665.47,
        orderDate: "1996-01-02",
        orderPriority: "5-LOW",
        lineItems: [
          { lineNumber: 1, partKey: "P-155190", quantity: 17, extendedPrice: 21168.23, discount: 0.04, tax: 0.02 },
          { lineNumber: 2, partKey: "P-67310", quantity: 36, extendedPrice: 45983.16, discount: 0.09, tax: 0.06 },
        ],
      });

      const accepted = await ingest.ingest({
        record: { kind: { case: "order", value: order }, source: "ts-client-test" },
      });
      assert.match(accepted.messageId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      assert.equal(accepted.entityType, EntityType.ORDER);
      assert.equal(accepted.duplicate, false);
      assert.ok(accepted.receivedAt, "receivedAt is set");

      // The server ends the stream once the status is terminal (completed or
      // dlq), so the loop is read to its end rather than left with break: an
      // abandoned Connect stream keeps its connection open until the signal
      // fires or the server's idle timeout closes it.
      let last: MessageStatus | undefined;
      const seen: string[] = [];
      for await (const event of statuses.watchStatus(
        { messageId: accepted.messageId },
        { signal: AbortSignal.timeout(completionTimeoutMs) },
      )) {
        last = event.status;
        seen.push(Status[last?.status ?? Status.UNSPECIFIED]);
      }
      assert.equal(
        last?.status,
        Status.COMPLETED,
        `watched ${seen.join(" → ")}; last error: ${last?.errorMessage || "(none)"}`,
      );

      const { status } = await statuses.getStatus({ messageId: accepted.messageId });
      assert.ok(status, "getStatus returns a status");
      assert.equal(status.messageId, accepted.messageId);
      assert.equal(status.entityType, EntityType.ORDER);
      assert.equal(status.status, Status.COMPLETED);
      assert.equal(status.source, "ts-client-test");
      assert.ok(status.processedAt, "processedAt is set once completed");
      assert.ok(
        timestampDate(status.processedAt) >= timestampDate(accepted.receivedAt),
        "processed no earlier than received",
      );
    });

    test("refuses an invalid typed order with InvalidArgument naming the field", async () => {
      const order = create(OrderSchema, {
        orderKey: `ts-${name}-invalid-${randomUUID()}`,
        customerKey: "C-ts-1",
        totalPrice: -1,
      });
      await assert.rejects(
        ingest.ingest({ record: { kind: { case: "order", value: order } } }),
        (err: unknown) => {
          const cerr = ConnectError.from(err);
          assert.equal(cerr.code, Code.InvalidArgument, `code of ${cerr.message}`);
          assert.match(cerr.rawMessage, /total_price/);
          return true;
        },
      );
    });
  });
}
