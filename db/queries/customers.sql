-- name: CustomerUpsertMany :many
-- Writes customers, newest record wins; returns the keys it wrote.
INSERT INTO customers AS t (
    customer_key, name, address, nation_key, phone, account_balance, market_segment,
    comment, received_at, message_id
)
SELECT u.customer_key, NULLIF(u.name, ''), NULLIF(u.address, ''), u.nation_key, NULLIF(u.phone, ''),
       u.account_balance::numeric(15,2), NULLIF(u.market_segment, ''), NULLIF(u.comment, ''),
       u.received_at, u.message_id
FROM (SELECT
    unnest(@customer_keys::text[]) AS customer_key,
    unnest(@names::text[]) AS name,
    unnest(@addresses::text[]) AS address,
    unnest(@nation_keys::int4[]) AS nation_key,
    unnest(@phones::text[]) AS phone,
    unnest(@account_balances::float8[]) AS account_balance,
    unnest(@market_segments::text[]) AS market_segment,
    unnest(@comments::text[]) AS comment,
    unnest(@received_ats::timestamptz[]) AS received_at,
    unnest(@message_ids::uuid[]) AS message_id
) AS u
ON CONFLICT (customer_key) DO UPDATE SET
    name            = excluded.name,
    address         = excluded.address,
    nation_key      = excluded.nation_key,
    phone           = excluded.phone,
    account_balance = excluded.account_balance,
    market_segment  = excluded.market_segment,
    comment         = excluded.comment,
    received_at     = excluded.received_at,
    message_id      = excluded.message_id,
    updated_at      = now()
WHERE (excluded.received_at, excluded.message_id) >= (t.received_at, t.message_id)
RETURNING customer_key;
