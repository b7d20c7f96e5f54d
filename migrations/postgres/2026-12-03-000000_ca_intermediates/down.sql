ALTER TABLE ca_state DROP COLUMN intermediates_der;
