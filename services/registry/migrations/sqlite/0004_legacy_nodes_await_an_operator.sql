-- Nodes enrolled before join tokens named operators chose their own operator and slots. They
-- wait for an admin to approve them again, naming their operator (`zkmesh node approve ID
-- --operator NAME`), so one party cannot keep two self-named operators.
UPDATE nodes SET state = 'pending', certificate_pem = NULL WHERE token_hash = '' AND state = 'approved';
