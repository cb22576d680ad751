-- +goose Up

-- message_status tracks every accepted message. Writers never read-modify-write:
-- each write carries a key (generation, attempt, rank) and only a larger key
-- replaces the row, so writes may arrive in any order and the row still ends
-- right; completed and dlq are final until a replay starts a new generation.
-- rank: accepted 0 < processing 1 < failed 2 < completed/dlq 3; generation is
-- the replay count; attempt is the JetStream delivery count.
CREATE TABLE message_status (
    message_id    UUID PRIMARY KEY,
    entity_type   VARCHAR(50)  NOT NULL,
    status        VARCHAR(20)  NOT NULL
        CHECK (status IN ('accepted', 'processing', 'failed', 'completed', 'dlq')),
    received_at   TIMESTAMPTZ  NOT NULL,
    processed_at  TIMESTAMPTZ,
    retry_count   INTEGER      NOT NULL DEFAULT 0,
    error_message TEXT,
    source        VARCHAR(255),
    generation    INTEGER      NOT NULL DEFAULT 0,
    attempt       INTEGER      NOT NULL DEFAULT 0,
    rank          SMALLINT     NOT NULL DEFAULT 0,
    -- Sequence of the entry on the dead-letter stream while status is 'dlq'.
    dlq_sequence  BIGINT,
    created_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ  NOT NULL DEFAULT now()
) WITH (fillfactor = 40);

-- Each message's row is updated three or more times. Leaving room on the
-- page (fillfactor) and indexing no column that changes lets PostgreSQL do
-- those as HOT updates, without touching the indexes. So there is no index
-- on status: listing by status walks this one and filters.
CREATE INDEX idx_message_status_received_at ON message_status (received_at DESC, message_id DESC);

-- message_attempt keeps each failed attempt; a retried write of the same
-- attempt is a no-op.
CREATE TABLE message_attempt (
    message_id  UUID        NOT NULL,
    generation  INTEGER     NOT NULL,
    attempt     INTEGER     NOT NULL,
    error       TEXT        NOT NULL,
    error_class VARCHAR(20) NOT NULL,
    failed_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (message_id, generation, attempt)
);

-- Entity tables: one row per business key. received_at and message_id are
-- those of the record that last wrote the row; an older record never
-- replaces a newer one.
CREATE TABLE orders (
    id             BIGSERIAL PRIMARY KEY,
    order_key      TEXT          NOT NULL UNIQUE,
    customer_key   TEXT          NOT NULL,
    order_status   TEXT,
    total_price    NUMERIC(15,2) NOT NULL DEFAULT 0,
    order_date     DATE,
    order_priority TEXT,
    clerk          TEXT,
    ship_priority  INTEGER       NOT NULL DEFAULT 0,
    comment        TEXT,
    received_at    TIMESTAMPTZ   NOT NULL,
    message_id     UUID          NOT NULL,
    created_at     TIMESTAMPTZ   NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ   NOT NULL DEFAULT now()
);

-- Line items are written only together with their order, in the same
-- transaction (store.StoreRecords). A foreign key to orders would check and
-- lock the order row for every line, a quarter of the worker's database time,
-- to guard an invariant the single writer already keeps.
CREATE TABLE order_line_items (
    id             BIGSERIAL PRIMARY KEY,
    order_key      TEXT          NOT NULL,
    line_number    INTEGER       NOT NULL,
    part_key       TEXT          NOT NULL,
    supplier_key   TEXT,
    quantity       NUMERIC(15,2) NOT NULL DEFAULT 0,
    extended_price NUMERIC(15,2) NOT NULL DEFAULT 0,
    discount       NUMERIC(5,4)  NOT NULL DEFAULT 0,
    tax            NUMERIC(5,4)  NOT NULL DEFAULT 0,
    return_flag    TEXT,
    line_status    TEXT,
    ship_date      DATE,
    commit_date    DATE,
    receipt_date   DATE,
    ship_instruct  TEXT,
    ship_mode      TEXT,
    comment        TEXT,
    UNIQUE (order_key, line_number)
);

CREATE TABLE customers (
    id              BIGSERIAL PRIMARY KEY,
    customer_key    TEXT          NOT NULL UNIQUE,
    name            TEXT,
    address         TEXT,
    nation_key      INTEGER       NOT NULL DEFAULT 0,
    phone           TEXT,
    account_balance NUMERIC(15,2) NOT NULL DEFAULT 0,
    market_segment  TEXT,
    comment         TEXT,
    received_at     TIMESTAMPTZ   NOT NULL,
    message_id      UUID          NOT NULL,
    created_at      TIMESTAMPTZ   NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ   NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id           BIGSERIAL PRIMARY KEY,
    part_key     TEXT          NOT NULL UNIQUE,
    name         TEXT,
    mfgr         TEXT,
    brand        TEXT,
    type         TEXT,
    size         INTEGER       NOT NULL DEFAULT 0,
    container    TEXT,
    retail_price NUMERIC(15,2) NOT NULL DEFAULT 0,
    comment      TEXT,
    received_at  TIMESTAMPTZ   NOT NULL,
    message_id   UUID          NOT NULL,
    created_at   TIMESTAMPTZ   NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ   NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE products;
DROP TABLE customers;
DROP TABLE order_line_items;
DROP TABLE orders;
DROP TABLE message_attempt;
DROP TABLE message_status;
