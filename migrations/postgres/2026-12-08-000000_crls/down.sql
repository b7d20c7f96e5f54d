DROP INDEX crls_shard_idx;
DROP TABLE crls;
DROP TABLE crl_shards;
DROP TABLE crl_issuers;
ALTER TABLE certificate_revocations DROP COLUMN invalidity_date;
DROP INDEX crl_assignments_shard_idx;
DROP TABLE crl_assignments;
