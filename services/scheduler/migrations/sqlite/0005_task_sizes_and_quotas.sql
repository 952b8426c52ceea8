-- A task's input size as a column, so lists and quotas never load inputs.
ALTER TABLE tasks ADD COLUMN input_size BIGINT NOT NULL DEFAULT 0;
UPDATE tasks SET input_size = length(input);
-- Per-user quotas: tasks in flight and their inputs, and stored modules.
CREATE INDEX tasks_submitter_state ON tasks (submitter, state);
CREATE INDEX modules_uploader ON modules (uploaded_by);
