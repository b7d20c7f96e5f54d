CREATE INDEX certificates_token_id_idx ON certificates (token_id);
CREATE INDEX certificates_predecessor_idx ON certificates (predecessor);
CREATE INDEX certificates_not_after_idx ON certificates (not_after);
