-- name: MessageAttemptInsertMany :exec
INSERT INTO message_attempt (message_id, generation, attempt, error, error_class, failed_at)
SELECT
    unnest(@message_ids::uuid[]),
    unnest(@generations::int4[]),
    unnest(@attempts::int4[]),
    unnest(@errors::text[]),
    unnest(@error_classes::text[]),
    unnest(@failed_ats::timestamptz[])
ON CONFLICT DO NOTHING;

-- name: MessageAttemptListByMessage :many
SELECT * FROM message_attempt
WHERE message_id = ANY(@message_ids::uuid[])
ORDER BY message_id, generation, attempt;
