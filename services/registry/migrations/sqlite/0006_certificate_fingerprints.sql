-- The SHA-256 (lowercase hex, of the DER) of the certificate the registry last issued each
-- node, and of the one the node renewed with (it may still use that one while it switches). A
-- node is served only under one of these: a certificate for its id from anywhere else (a stolen
-- node issuer, which picks serials as it likes but has not the node's key) is not it. Filled
-- at start for nodes issued before these columns.
ALTER TABLE nodes ADD COLUMN certificate_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN previous_certificate_sha256 TEXT NOT NULL DEFAULT '';
