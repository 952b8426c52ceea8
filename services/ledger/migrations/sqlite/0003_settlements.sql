-- A pay entry's evidence: the verifier's signed settlement (a SignedSettlement, protobuf), which
-- the entry's hash covers. NULL on every other entry.
ALTER TABLE journal ADD COLUMN settlement BYTEA;
