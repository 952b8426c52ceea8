-- Idempotent submission: a task made for a client's request id, at most one per submitter and id.
ALTER TABLE tasks ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
CREATE UNIQUE INDEX tasks_request ON tasks (submitter, request_id) WHERE request_id <> '';
-- A hold asked of the ledger for a task not stored yet: if the submission never finishes (the
-- ledger answered too late, the scheduler stopped), a sweep gives the hold back.
CREATE TABLE pending_holds (
    task_id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    amount BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
