CREATE TABLE verdicts (
    verdict_id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL,
    output_hash TEXT NOT NULL,
    accepted TEXT NOT NULL,
    rejected TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX verdicts_task ON verdicts (task_id, at_ms);
