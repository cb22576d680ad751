-- name: OrderUpsertMany :many
-- Writes orders, newest record wins; returns the keys it wrote, and whether
-- each was new (xmax = 0 on a freshly inserted row), so the caller replaces
-- line items only where there were some. Keys must be unique in one call.
INSERT INTO orders AS t (
    order_key, customer_key, order_status, total_price, order_date, order_priority,
    clerk, ship_priority, comment, received_at, message_id
)
SELECT u.order_key, u.customer_key, NULLIF(u.order_status, ''), u.total_price::numeric(15,2),
       NULLIF(u.order_date, '')::date, NULLIF(u.order_priority, ''), NULLIF(u.clerk, ''),
       u.ship_priority, NULLIF(u.comment, ''), u.received_at, u.message_id
FROM (SELECT
    unnest(@order_keys::text[]) AS order_key,
    unnest(@customer_keys::text[]) AS customer_key,
    unnest(@order_statuses::text[]) AS order_status,
    unnest(@total_prices::float8[]) AS total_price,
    unnest(@order_dates::text[]) AS order_date,
    unnest(@order_priorities::text[]) AS order_priority,
    unnest(@clerks::text[]) AS clerk,
    unnest(@ship_priorities::int4[]) AS ship_priority,
    unnest(@comments::text[]) AS comment,
    unnest(@received_ats::timestamptz[]) AS received_at,
    unnest(@message_ids::uuid[]) AS message_id
) AS u
ON CONFLICT (order_key) DO UPDATE SET
    customer_key   = excluded.customer_key,
    order_status   = excluded.order_status,
    total_price    = excluded.total_price,
    order_date     = excluded.order_date,
    order_priority = excluded.order_priority,
    clerk          = excluded.clerk,
    ship_priority  = excluded.ship_priority,
    comment        = excluded.comment,
    received_at    = excluded.received_at,
    message_id     = excluded.message_id,
    updated_at     = now()
WHERE (excluded.received_at, excluded.message_id) >= (t.received_at, t.message_id)
RETURNING order_key, (xmax = 0)::boolean AS inserted;
