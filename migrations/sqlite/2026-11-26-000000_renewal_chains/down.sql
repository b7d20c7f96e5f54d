DROP INDEX certificates_predecessor_idx;
DROP TABLE renewal_chains;
