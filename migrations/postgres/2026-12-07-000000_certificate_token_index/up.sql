-- An enrollment whose token is used up looks for what a crash left of that
-- token's earlier requests (its issued certificate, to deliver again; its
-- pending rows, to reconcile): without this index a retry, or a replayed
-- token, would scan the whole table.
CREATE INDEX certificates_token_id_idx ON certificates (token_id);
