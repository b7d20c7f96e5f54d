-- Renewal over mTLS: when did each certificate's chain of renewals begin
-- (its first enrollment)? The policy's `max_chain_age` is enforced against
-- it. A side table rather than a column: `certificates` stays within
-- diesel's default 16-column tables. Every certificate has a row, written in
-- the same transaction as the certificate.
CREATE TABLE renewal_chains (
    serial           TEXT   NOT NULL PRIMARY KEY REFERENCES certificates (serial),
    chain_started_at BIGINT NOT NULL
);
INSERT INTO renewal_chains (serial, chain_started_at)
SELECT serial, created_at FROM certificates;
CREATE INDEX certificates_predecessor_idx ON certificates (predecessor);
