CREATE TABLE accounts (
    account TEXT PRIMARY KEY,
    balance BIGINT NOT NULL
);
CREATE TABLE holds (
    task_id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    amount BIGINT NOT NULL,
    paid BIGINT NOT NULL,
    refunded BIGINT NOT NULL,
    state TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE journal (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    account TEXT NOT NULL,
    task_id TEXT NOT NULL,
    amount BIGINT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature BYTEA NOT NULL
);
CREATE INDEX journal_account ON journal (account);
CREATE INDEX journal_task ON journal (task_id);
