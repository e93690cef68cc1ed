-- Experiment recording and decisions of the ab sidecar. Outcomes are the feature service's
-- `events` table in the same database (joined by request_id, else by user assignment).

-- One row per Recommend response in an experiment; a retried batch inserts nothing.
CREATE TABLE IF NOT EXISTS exposures (
    request_id             text PRIMARY KEY,
    user_id                text NOT NULL,
    experiment             text NOT NULL,
    variant                text NOT NULL,
    model_version          text NOT NULL,
    item_ids               text[] NOT NULL,
    ts                     timestamptz NOT NULL,
    assignment_probability double precision NOT NULL
        CHECK (assignment_probability > 0 AND assignment_probability <= 1)
);

-- Metrics scan one experiment's users; SRM counts them per variant.
CREATE INDEX IF NOT EXISTS exposures_experiment_user ON exposures (experiment, user_id, ts);

-- Audit log: every decision of the controller and every admin action, with its evidence.
CREATE TABLE IF NOT EXISTS decisions (
    id          bigserial PRIMARY KEY,
    experiment  text NOT NULL,
    decision    text NOT NULL,
    reason      text NOT NULL,
    evidence    jsonb NOT NULL DEFAULT '{}'::jsonb,
    decided_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS decisions_experiment ON decisions (experiment, decided_at);

-- The current state of each experiment that the routing tables of all gateways apply on top
-- of the configuration; no row means "running as configured".
CREATE TABLE IF NOT EXISTS experiment_state (
    experiment  text PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('running', 'rolled_back', 'promoted', 'stopped')),
    weights     jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
