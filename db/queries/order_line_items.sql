-- name: OrderLineItemDeleteByOrders :exec
DELETE FROM order_line_items WHERE order_key = ANY(@order_keys::text[]);

-- name: OrderLineItemInsertMany :exec
INSERT INTO order_line_items (
    order_key, line_number, part_key, supplier_key, quantity, extended_price, discount, tax,
    return_flag, line_status, ship_date, commit_date, receipt_date, ship_instruct, ship_mode, comment
)
SELECT u.order_key, u.line_number, u.part_key, NULLIF(u.supplier_key, ''),
       u.quantity::numeric(15,2), u.extended_price::numeric(15,2), u.discount::numeric(5,4),
       u.tax::numeric(5,4), NULLIF(u.return_flag, ''), NULLIF(u.line_status, ''),
       NULLIF(u.ship_date, '')::date, NULLIF(u.commit_date, '')::date,
       NULLIF(u.receipt_date, '')::date, NULLIF(u.ship_instruct, ''), NULLIF(u.ship_mode, ''),
       NULLIF(u.comment, '')
FROM (SELECT
    unnest(@order_keys::text[]) AS order_key,
    unnest(@line_numbers::int4[]) AS line_number,
    unnest(@part_keys::text[]) AS part_key,
    unnest(@supplier_keys::text[]) AS supplier_key,
    unnest(@quantities::float8[]) AS quantity,
    unnest(@extended_prices::float8[]) AS extended_price,
    unnest(@discounts::float8[]) AS discount,
    unnest(@taxes::float8[]) AS tax,
    unnest(@return_flags::text[]) AS return_flag,
    unnest(@line_statuses::text[]) AS line_status,
    unnest(@ship_dates::text[]) AS ship_date,
    unnest(@commit_dates::text[]) AS commit_date,
    unnest(@receipt_dates::text[]) AS receipt_date,
    unnest(@ship_instructs::text[]) AS ship_instruct,
    unnest(@ship_modes::text[]) AS ship_mode,
    unnest(@comments::text[]) AS comment
) AS u;
