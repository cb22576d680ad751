-- name: ProductUpsertMany :many
-- Writes products, newest record wins; returns the keys it wrote.
INSERT INTO products AS t (
    part_key, name, mfgr, brand, type, size, container, retail_price, comment,
    received_at, message_id
)
SELECT u.part_key, NULLIF(u.name, ''), NULLIF(u.mfgr, ''), NULLIF(u.brand, ''), NULLIF(u.type, ''),
       u.size, NULLIF(u.container, ''), u.retail_price::numeric(15,2), NULLIF(u.comment, ''),
       u.received_at, u.message_id
FROM (SELECT
    unnest(@part_keys::text[]) AS part_key,
    unnest(@names::text[]) AS name,
    unnest(@mfgrs::text[]) AS mfgr,
    unnest(@brands::text[]) AS brand,
    unnest(@types::text[]) AS type,
    unnest(@sizes::int4[]) AS size,
    unnest(@containers::text[]) AS container,
    unnest(@retail_prices::float8[]) AS retail_price,
    unnest(@comments::text[]) AS comment,
    unnest(@received_ats::timestamptz[]) AS received_at,
    unnest(@message_ids::uuid[]) AS message_id
) AS u
ON CONFLICT (part_key) DO UPDATE SET
    name         = excluded.name,
    mfgr         = excluded.mfgr,
    brand        = excluded.brand,
    type         = excluded.type,
    size         = excluded.size,
    container    = excluded.container,
    retail_price = excluded.retail_price,
    comment      = excluded.comment,
    received_at  = excluded.received_at,
    message_id   = excluded.message_id,
    updated_at   = now()
WHERE (excluded.received_at, excluded.message_id) >= (t.received_at, t.message_id)
RETURNING part_key;
