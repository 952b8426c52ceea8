-- Spot checks of receipt-policy results: how many nodes of other operators the scheduler asked
-- to re-run the task's current result (0, 1, or 2 once the first check disagreed), and which
-- attempts are such checks.
ALTER TABLE tasks ADD COLUMN spot_checks BIGINT NOT NULL DEFAULT 0;
-- When the current round of checks began: a round that has not ended within the task's timeout
-- plus the lease slack is given up.
ALTER TABLE tasks ADD COLUMN spot_checks_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN spot_check BIGINT NOT NULL DEFAULT 0;
-- Each node's record (its reputation), counted in the same transaction as the verdict it
-- comes from, so each verdict counts once.
CREATE TABLE node_records (
    node_id TEXT PRIMARY KEY,
    verified BIGINT NOT NULL DEFAULT 0,
    rejected BIGINT NOT NULL DEFAULT 0,
    spot_checks BIGINT NOT NULL DEFAULT 0,
    spot_failures BIGINT NOT NULL DEFAULT 0
);
