//! Workload-side helpers for agent tests: running `certmint enroll`/`agent`
//! and holding mutual-TLS connections with the files they write.
