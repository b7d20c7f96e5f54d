DROP TABLE audit_head;
DROP TABLE audit_events;
DROP TABLE ca_state;
DROP TABLE certificate_revocations;
DROP TABLE certificates;
DROP TABLE bootstrap_tokens;
DROP TABLE policies;
