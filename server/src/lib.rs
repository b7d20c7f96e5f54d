//! certmint-server: an HSM-backed CA that issues policy-checked, short-lived
//! certificates for mutual TLS over a REST API.
//!
//! Design overview (data flows top to bottom; each layer only calls down):
//!
//! ```text
//!  api        actix-web handlers, extractors, the problem-code table
//!   │
//!  issuance   CSR checks → policy → TBS → record → HSM sign → check → commit
//!  admin      policies, tokens, inventory, audit (service functions)
//!   │   ╲
//!  policy    tokens    ca (init, import, load)    tls (own HTTPS cert)
//!   │
//!  hsm        everything cryptoki; the rest sees `CaSigner`
//!  store      diesel; the only place that writes SQL
//! ```
//!
//! `commands` wires these together for the `certmint-server` binary.

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod ca;
pub mod clock;
pub mod commands;
pub mod config;
pub mod error;
pub mod files;
pub mod hsm;
pub mod issuance;
pub mod metrics;
pub mod policy;
pub mod random;
pub mod revocation;
pub mod store;
pub mod tls;
pub mod tokens;
