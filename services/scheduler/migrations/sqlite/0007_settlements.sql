-- The verifier's signed settlement of a VERIFIED task (a SignedSettlement, protobuf): the only
-- thing the ledger's Capture pays from.
ALTER TABLE tasks ADD COLUMN settlement BLOB;
