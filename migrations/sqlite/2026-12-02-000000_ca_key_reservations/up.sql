-- Keys `init` is about to generate on the token, written before
-- C_GenerateKeyPair with the random CKA_ID the key will carry. An `init`
-- interrupted between generating a key and recording the CA finds its own
-- key again by label and CKA_ID and uses it, instead of stopping at a
-- taken label; a key with the label but another CKA_ID is somebody else's
-- and is never touched. Emptied in the transaction that records the CA.
CREATE TABLE ca_key_reservations (
    label       TEXT   NOT NULL PRIMARY KEY,
    key_id      BLOB   NOT NULL,
    key_type    TEXT   NOT NULL,
    reserved_at BIGINT NOT NULL
);
