CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY,
    pre_approved BIGINT NOT NULL,
    uses_left BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    operator TEXT NOT NULL,
    state TEXT NOT NULL,
    csr_pem TEXT NOT NULL,
    receipt_public_key BYTEA NOT NULL,
    secret_hash TEXT NOT NULL,
    certificate_pem TEXT,
    certificate_expires_at_ms BIGINT NOT NULL,
    enrolled_at_ms BIGINT NOT NULL,
    last_heartbeat_at_ms BIGINT NOT NULL,
    slots BIGINT NOT NULL
);
