-- The serial number (lowercase hex) of the certificate the registry last issued each node, and
-- of the one the node renewed with (it may still use that one while it switches). A node is
-- served only under one of these: a certificate for its id from anywhere else (a stolen node
-- issuer) is not it. Filled at start for nodes issued before this column.
ALTER TABLE nodes ADD COLUMN certificate_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN previous_certificate_serial TEXT NOT NULL DEFAULT '';
