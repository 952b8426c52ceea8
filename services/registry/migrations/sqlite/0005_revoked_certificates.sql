-- Certificates of any role refused by serial number (lowercase hex of the DER serial's bytes).
CREATE TABLE revoked_certificates (
    serial TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    revoked_by TEXT NOT NULL,
    revoked_at_ms BIGINT NOT NULL
);
