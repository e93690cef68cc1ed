-- The offline snapshot (items, users) and the durable event log.

CREATE TABLE items (
    item_id     text PRIMARY KEY,
    title       text NOT NULL,
    price       double precision NOT NULL,
    category    text NOT NULL,
    subcategory text NOT NULL,
    available   boolean NOT NULL,
    popularity  real NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE users (
    user_id    text PRIMARY KEY,
    country    text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    orders     integer NOT NULL,
    revenue    double precision NOT NULL,
    updated_at timestamptz NOT NULL
);

-- One row per event id: a replayed batch inserts nothing (ON CONFLICT DO NOTHING).
CREATE TABLE events (
    event_id    text PRIMARY KEY,
    type        smallint NOT NULL,
    user_id     text NOT NULL,
    item_id     text NOT NULL,
    request_id  text NOT NULL,
    ts          timestamptz NOT NULL,
    quantity    integer NOT NULL,
    revenue     double precision NOT NULL,
    currency    text NOT NULL,
    position    integer NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- A user's recent events of some types: the read-through and degraded read path.
CREATE INDEX events_user_type_ts ON events (user_id, type, ts DESC);
