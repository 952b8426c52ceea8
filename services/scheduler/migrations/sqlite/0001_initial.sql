CREATE TABLE modules (
    module_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    size BIGINT NOT NULL,
    abi BIGINT NOT NULL,
    imports TEXT NOT NULL,
    bytes BYTEA NOT NULL,
    uploaded_by TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    submitter TEXT NOT NULL,
    module_hash TEXT NOT NULL REFERENCES modules (module_hash),
    input BYTEA NOT NULL,
    input_hash TEXT NOT NULL,
    fuel_limit BIGINT NOT NULL,
    memory_limit_mib BIGINT NOT NULL,
    timeout_secs BIGINT NOT NULL,
    policy_kind BIGINT NOT NULL,
    replicas BIGINT NOT NULL,
    state BIGINT NOT NULL,
    message TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    credits_held BIGINT NOT NULL,
    exit BIGINT NOT NULL,
    exit_message TEXT NOT NULL,
    output BYTEA,
    output_hash TEXT NOT NULL,
    fuel_used BIGINT NOT NULL,
    verdict BIGINT NOT NULL,
    verdict_reason TEXT NOT NULL,
    credits_charged BIGINT NOT NULL,
    run_time_us BIGINT NOT NULL,
    receipts BYTEA,
    hold_closed BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX tasks_state ON tasks (state, created_at_ms);
CREATE INDEX tasks_submitter ON tasks (submitter, created_at_ms);
CREATE TABLE attempts (
    attempt_id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks (task_id),
    node_id TEXT NOT NULL,
    operator TEXT NOT NULL,
    state TEXT NOT NULL,
    lease_expires_at_ms BIGINT NOT NULL,
    output BYTEA,
    exit BIGINT NOT NULL,
    exit_message TEXT NOT NULL,
    fuel_used BIGINT NOT NULL,
    run_time_us BIGINT NOT NULL,
    receipt BYTEA,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX attempts_task ON attempts (task_id);
CREATE INDEX attempts_state ON attempts (state, lease_expires_at_ms);
CREATE TABLE task_events (
    task_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    state BIGINT NOT NULL,
    message TEXT NOT NULL,
    node_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (task_id, seq)
);
