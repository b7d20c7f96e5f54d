-- Revoking a certificate for key compromise also revokes every certificate
-- renewed from it, found through `predecessor`: without this index each
-- generation of that walk would scan the whole table.
CREATE INDEX certificates_predecessor_idx ON certificates (predecessor);
