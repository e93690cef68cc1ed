-- Which offline snapshot the items and users tables hold, so a process that opens the store
-- reloads them only when the build's files changed.

CREATE TABLE snapshot_state (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    source    text NOT NULL,
    loaded_at timestamptz NOT NULL
);
