-- The price a task's hold was made at (micro-credits per million fuel): its settlement bills at
-- the same price, whatever the configuration says by then. 0: a task stored before the column
-- (billed at the configured price).
ALTER TABLE tasks ADD COLUMN micro_credits_per_million_fuel BIGINT NOT NULL DEFAULT 0;
