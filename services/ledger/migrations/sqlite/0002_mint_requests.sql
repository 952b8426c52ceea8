-- Idempotency keys of mints: a retried Mint with the same request_id mints once.
CREATE TABLE mint_requests (
    request_id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    amount BIGINT NOT NULL,
    at_ms BIGINT NOT NULL
);
