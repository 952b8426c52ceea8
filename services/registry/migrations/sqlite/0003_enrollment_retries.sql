-- A retried Enroll finds the node it made by its token and enrollment secret.
CREATE UNIQUE INDEX nodes_enrollment ON nodes (token_hash, secret_hash);
