-- A VERIFIED verdict's signed settlement (a SignedSettlement, protobuf); NULL otherwise.
ALTER TABLE verdicts ADD COLUMN settlement BYTEA;
