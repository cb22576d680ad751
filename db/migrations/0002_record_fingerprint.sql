-- +goose Up

-- record_sha256 fingerprints the record a message was accepted with, so a
-- later call reusing its idempotency key with a different record is refused
-- instead of being answered as a duplicate and dropped. Set by ingest's
-- 'accepted' write and never changed after; NULL where unknown (a row the
-- worker created before ingest's write landed).
ALTER TABLE message_status ADD COLUMN record_sha256 BYTEA;

-- +goose Down
ALTER TABLE message_status DROP COLUMN record_sha256;
