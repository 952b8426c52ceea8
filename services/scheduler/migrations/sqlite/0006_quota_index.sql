-- The quota query reads only this index, never the task rows (whose inputs come first).
CREATE INDEX tasks_quota ON tasks (submitter, state, input_size);
