-- name: MessageStatusUpsertMany :exec
-- Applies many status writes at once. A write replaces the stored row only
-- when its (generation, attempt, rank) key is larger and the row is not
-- already completed or dlq in that generation, which makes the writes
-- commutative: the worker's 'completed' may land before ingest's 'accepted',
-- and a redelivery after completion cannot move the row back.
INSERT INTO message_status AS t (
    message_id, entity_type, status, received_at, processed_at, retry_count,
    error_message, source, generation, attempt, rank, dlq_sequence, record_sha256
)
SELECT u.message_id, u.entity_type, u.status, u.received_at, u.processed_at, u.retry_count,
       NULLIF(u.error_message, ''), NULLIF(u.source, ''), u.generation, u.attempt, u.rank,
       NULLIF(u.dlq_sequence, 0), NULLIF(u.record_sha256, ''::bytea)
FROM (SELECT
    unnest(@message_ids::uuid[]) AS message_id,
    unnest(@entity_types::text[]) AS entity_type,
    unnest(@statuses::text[]) AS status,
    unnest(@received_ats::timestamptz[]) AS received_at,
    unnest(@processed_ats::timestamptz[]) AS processed_at,
    unnest(@retry_counts::int4[]) AS retry_count,
    unnest(@error_messages::text[]) AS error_message,
    unnest(@sources::text[]) AS source,
    unnest(@generations::int4[]) AS generation,
    unnest(@attempts::int4[]) AS attempt,
    unnest(@ranks::int2[]) AS rank,
    unnest(@dlq_sequences::int8[]) AS dlq_sequence,
    unnest(@record_sha256s::bytea[]) AS record_sha256
) AS u
ON CONFLICT (message_id) DO UPDATE SET
    entity_type   = excluded.entity_type,
    status        = excluded.status,
    received_at   = excluded.received_at,
    processed_at  = excluded.processed_at,
    retry_count   = excluded.retry_count,
    error_message = excluded.error_message,
    source        = COALESCE(excluded.source, t.source),
    generation    = excluded.generation,
    attempt       = excluded.attempt,
    rank          = excluded.rank,
    dlq_sequence  = excluded.dlq_sequence,
    record_sha256 = COALESCE(t.record_sha256, excluded.record_sha256),
    updated_at    = now()
WHERE excluded.generation > t.generation
   OR (excluded.generation = t.generation
       AND t.rank < 3 -- completed and dlq are final within a generation
       AND (excluded.attempt, excluded.rank) > (t.attempt, t.rank));

-- name: MessageStatusGetByID :one
SELECT * FROM message_status WHERE message_id = $1;

-- name: MessageStatusGetMany :many
SELECT * FROM message_status WHERE message_id = ANY(@message_ids::uuid[]);

-- name: MessageStatusList :many
-- Newest first; the cursor is the (received_at, message_id) of the last row
-- of the previous page.
SELECT * FROM message_status
WHERE (cardinality(@statuses::text[]) = 0 OR status = ANY(@statuses::text[]))
  AND (@entity_type::text = '' OR entity_type = @entity_type::text)
  AND (sqlc.narg(received_after)::timestamptz IS NULL OR received_at >= sqlc.narg(received_after)::timestamptz)
  AND (sqlc.narg(received_before)::timestamptz IS NULL OR received_at < sqlc.narg(received_before)::timestamptz)
  AND (sqlc.narg(cursor_received_at)::timestamptz IS NULL
       OR (received_at, message_id) < (sqlc.narg(cursor_received_at)::timestamptz, sqlc.narg(cursor_message_id)::uuid))
ORDER BY received_at DESC, message_id DESC
LIMIT @page_size;

-- name: MessageStatusCount :many
SELECT status, entity_type, count(*) AS count
FROM message_status
GROUP BY status, entity_type
ORDER BY status, entity_type;
