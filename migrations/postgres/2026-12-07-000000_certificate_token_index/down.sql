DROP INDEX certificates_token_id_idx;
