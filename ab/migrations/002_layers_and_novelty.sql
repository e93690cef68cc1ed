-- Layered experiments: a user in experiments of several layers gives one exposure per
-- experiment for one response, so an exposure is keyed by request and experiment.
ALTER TABLE exposures DROP CONSTRAINT IF EXISTS exposures_pkey;
ALTER TABLE exposures ADD PRIMARY KEY (request_id, experiment);

-- The items of item_ids that were new to the user when served (the discovery metrics);
-- exposures written before this column have none recorded.
ALTER TABLE exposures ADD COLUMN IF NOT EXISTS new_item_ids text[] NOT NULL DEFAULT '{}';
