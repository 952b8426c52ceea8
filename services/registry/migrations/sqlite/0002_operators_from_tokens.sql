-- The admin names a node's operator and slots in its join token; the node no longer does.
-- Tokens made before name no operator ('') and are refused at enrollment.
ALTER TABLE join_tokens ADD COLUMN operator TEXT NOT NULL DEFAULT '';
ALTER TABLE join_tokens ADD COLUMN slots BIGINT NOT NULL DEFAULT 0;
-- Which token a node enrolled with (its hash), for the record.
ALTER TABLE nodes ADD COLUMN token_hash TEXT NOT NULL DEFAULT '';
