// The client's entry point: the three services and the messages they use.
// Pair them with a transport from @connectrpc/connect-node (Node.js) or
// @connectrpc/connect-web (browsers); see README.md.
export * from "./src/nomnom/ingest/v1/ingest_pb.js";
export * from "./src/nomnom/status/v1/status_pb.js";
export * from "./src/nomnom/deadletter/v1/deadletter_pb.js";
export * from "./src/nomnom/tpch/v1/tpch_pb.js";
export * from "./src/nomnom/envelope/v1/envelope_pb.js";
