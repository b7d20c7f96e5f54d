-- certmint store, PostgreSQL dialect. Keep in step with ../../sqlite/: the
-- schema-parity test compares tables, columns, nullability, primary keys and
-- index names of both.
--
-- Times are BIGINT unix seconds (UTC): one portable representation that both
-- dialects compare and index the same way, with no time-zone or text-format
-- ambiguity. JSON bodies are TEXT; DER is BYTEA.

CREATE TABLE policies (
    name        TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    spec_json   TEXT    NOT NULL,
    enabled     BOOLEAN NOT NULL,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL,
    PRIMARY KEY (name, version)
);

-- The JWT's `jti` is the id. Uses are consumed by a conditional UPDATE.
CREATE TABLE bootstrap_tokens (
    id            TEXT    NOT NULL PRIMARY KEY,
    policy        TEXT    NOT NULL,
    identity_json TEXT    NOT NULL,
    max_uses      BIGINT  NOT NULL CHECK (max_uses >= 1),
    uses          BIGINT  NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    expires_at    BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL,
    created_by    TEXT    NOT NULL,
    revoked_at    BIGINT
);
CREATE INDEX bootstrap_tokens_created_at_idx ON bootstrap_tokens (created_at, id);

-- One row per serial, written (status 'pending', with the TBS) before the HSM
-- signs: the primary key is the serial-collision check.
CREATE TABLE certificates (
    serial             TEXT   NOT NULL PRIMARY KEY,
    status             TEXT   NOT NULL CHECK (status IN ('pending', 'issued', 'revoked', 'failed')),
    policy             TEXT   NOT NULL,
    policy_version     BIGINT NOT NULL,
    identity_json      TEXT   NOT NULL,
    key_type           TEXT   NOT NULL,
    subject_key_sha256 TEXT   NOT NULL,
    not_before         BIGINT NOT NULL,
    not_after          BIGINT NOT NULL,
    tbs_der            BYTEA  NOT NULL,
    certificate_der    BYTEA,
    token_id           TEXT,
    predecessor        TEXT,
    created_at         BIGINT NOT NULL,
    issued_at          BIGINT,
    failure            TEXT
);
CREATE INDEX certificates_policy_idx ON certificates (policy, created_at);
CREATE INDEX certificates_status_idx ON certificates (status, not_after);
CREATE INDEX certificates_not_after_idx ON certificates (not_after);
CREATE INDEX certificates_created_at_idx ON certificates (created_at, serial);
CREATE INDEX certificates_token_id_idx ON certificates (token_id);

-- One row per revoked certificate (the primary key makes revocation happen
-- once); kept apart from `certificates` so CRL/OCSP reads stay small.
CREATE TABLE certificate_revocations (
    serial     TEXT   NOT NULL PRIMARY KEY REFERENCES certificates (serial),
    revoked_at BIGINT NOT NULL,
    reason     TEXT   NOT NULL,
    revoked_by TEXT   NOT NULL
);

-- The CA's certificates, shared by every replica. A single row (id = 1).
CREATE TABLE ca_state (
    id                INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    root_der          BYTEA    NOT NULL,
    issuing_der       BYTEA,
    root_key_label    TEXT,
    issuing_key_label TEXT    NOT NULL,
    issuing_key_type  TEXT    NOT NULL,
    pending_csr_der   BYTEA,
    created_at        BIGINT  NOT NULL
);

-- Hash-chained audit log. `audit_head` serialises appends: every writer
-- first bumps its `seq` (a row lock on PostgreSQL; SQLite's BEGIN IMMEDIATE
-- already serialises writers).
CREATE TABLE audit_events (
    seq       BIGINT NOT NULL PRIMARY KEY,
    at        BIGINT NOT NULL,
    kind      TEXT   NOT NULL,
    actor     TEXT   NOT NULL,
    subject   TEXT   NOT NULL,
    data_json TEXT   NOT NULL,
    prev_hash TEXT   NOT NULL,
    hash      TEXT   NOT NULL
);

CREATE TABLE audit_head (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  BIGINT  NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
