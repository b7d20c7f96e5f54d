-- Revocation lists (RFC 5280 CRLs), signed on the HSM and shared by every
-- replica of one database (docs/REVOCATION.md).
--
-- Each certificate is assigned at issuance to one CRL shard of its issuer
-- (chosen from its notAfter), so no CRL grows without bound. Certificates
-- recorded before CRLs existed get theirs when a server first starts.
-- (A table of its own: diesel's tables stop at 16 columns, as for
-- renewal_chains.)
CREATE TABLE crl_assignments (
    serial          TEXT    NOT NULL PRIMARY KEY REFERENCES certificates (serial),
    issuer_key_id   TEXT    NOT NULL,
    shard           INTEGER NOT NULL CHECK (shard >= 0)
);
CREATE INDEX crl_assignments_shard_idx ON crl_assignments (issuer_key_id, shard);

-- A key compromise's invalidityDate, when the revoker knows it.
ALTER TABLE certificate_revocations ADD COLUMN invalidity_date BIGINT;

-- One row per issuer: the last CRL number handed out. Numbers come from
-- this row under its lock, so they are unique and increasing across
-- replicas and shards.
CREATE TABLE crl_issuers (
    issuer_key_id   TEXT    NOT NULL PRIMARY KEY,
    last_number     BIGINT  NOT NULL CHECK (last_number >= 0)
);

-- One row per shard: `generation` moves on with every revocation in it, so
-- a shard whose latest CRL was built from an older generation is stale.
-- The claim lets one replica at a time sign a shard; a claim past
-- `claimed_until` (its signer died) is free again.
CREATE TABLE crl_shards (
    issuer_key_id   TEXT    NOT NULL,
    shard           INTEGER NOT NULL CHECK (shard >= 0),
    generation      BIGINT  NOT NULL DEFAULT 0,
    claim_number    BIGINT  NOT NULL DEFAULT 0,
    claimed_until   BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (issuer_key_id, shard)
);

-- Signed CRLs. The newest few of each shard are kept; the highest number
-- of a shard is the one served.
CREATE TABLE crls (
    issuer_key_id   TEXT    NOT NULL,
    number          BIGINT  NOT NULL,
    shard           INTEGER NOT NULL,
    scope           TEXT    NOT NULL,
    generation      BIGINT  NOT NULL,
    this_update     BIGINT  NOT NULL,
    next_update     BIGINT  NOT NULL,
    entries         BIGINT  NOT NULL,
    der             BLOB    NOT NULL,
    sha256          TEXT    NOT NULL,
    PRIMARY KEY (issuer_key_id, number)
);
CREATE INDEX crls_shard_idx ON crls (issuer_key_id, shard, number);
