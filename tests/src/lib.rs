//! End-to-end harness for certmint: runs the real `certmint-server` binary
//! against SoftHSM2 and SQLite or PostgreSQL, and talks to it over real TLS.
//!
//! Design overview:
//!
//! ```text
//!   test body ──► TestServer helpers ──HTTPS (rustls, trusts root.pem only)──► certmint-server serve
//!                     │                                                           │
//!                     ├─ make_csr (rcgen; openssl for RSA)                        ├─ SoftHSM2 token (own dir)
//!                     ├─ forge_* (hostile JWTs)                                   └─ SQLite file / PostgreSQL db
//!                     └─ verify_* (rustls-webpki and `openssl verify`)
//! ```
//!
//! [`TestServer::start`] and [`TestServer::shared`] run `init` with an
//! ec-p256 CA and text logs; [`TestServer::builder`] takes [`ServerOptions`]
//! (CA key type, JSON logs, external-root mode). In external-root mode the
//! test plays the offline root with `openssl` ([`OfflineRoot`]) and installs
//! the chain with `ca import-chain`; [`ServerBuilder::init_external_root`]
//! stops at the pending CA ([`PendingCa`]) for tests of that state.
//!
//! Every server gets its own temporary directory, SoftHSM2 token directory
//! and `softhsm2.conf`, PINs, free port and database. The SoftHSM2 and PIN
//! environment is passed to the *child* processes only; this process never
//! calls `set_var`.
//!
//! Lifetime: `serve` runs under a small `sh` supervisor whose stdin is a pipe
//! held by this process. When the pipe closes (the [`TestServer`] is dropped,
//! or the test process exits for any reason, even SIGKILL) the supervisor
//! stops the server, drops the PostgreSQL database and removes the directory.
//! That is what lets a test binary share one server per back end in a
//! `static` (which Rust never drops) without leaking processes or databases.
//! Set `CERTMINT_E2E_KEEP=1` to keep the directory for inspection.
//!
//! Invariants checked for every test run through [`backend_tests!`]: no
//! response is ever a 500; every error is `application/problem+json` with a
//! `code`; every certificate a client received is in the inventory as
//! issued (or revoked) when the test ends.
//!
//! Environment:
//! - `CERTMINT_SERVER_BIN`: the server binary (default: `target/debug/certmint-server`
//!   found by walking up from the test executable).
//! - `CERTMINT_TEST_PKCS11_MODULE`: SoftHSM2 module (default `/usr/lib/softhsm/libsofthsm2.so`).
//! - `CERTMINT_REQUIRE_SOFTHSM=1`: a missing SoftHSM2 fails instead of skipping.
//! - `CERTMINT_TEST_POSTGRES_URL`: where to create per-server databases
//!   (default `postgres://postgres@127.0.0.1:5432/test`).
//! - `CERTMINT_REQUIRE_POSTGRES=1`: an unreachable PostgreSQL fails instead of skipping.
//! - `CERTMINT_REQUIRE_ROOT=1`: a test that acts as other users (which needs
//!   root) fails instead of skipping when not run as root.
//!
//! Layout (each module's doc says its job and invariants):
//!
//! - `server` ([`TestServer`]): one running server and what a test does
//!   with it; `supervisor` owns its process's lifetime; `http` is the
//!   request, response and client side; `replica` ([`Replica`]) is a
//!   second `serve` on the same database and token.
//! - `builder` ([`ServerOptions`], [`ServerBuilder`]) and `external_root`
//!   ([`PendingCa`], [`OfflineRoot`]): setting a server up.
//! - `run` ([`run_test`], [`backend_tests!`]): running test bodies on every
//!   back end.
//! - `policy`, `csr`, `jwt`: what clients send; `verify`: independent
//!   checks of what they get back.
//! - `hsm`, `process`, `postgres`: tokens, child processes, databases.
//! - [`cli`] and [`workload`]: the `certmint` CLI and agent side.

pub mod cli;
pub mod workload;

mod builder;
mod csr;
mod external_root;
mod hsm;
mod http;
mod jwt;
mod policy;
mod postgres;
mod process;
mod replica;
mod run;
mod server;
mod supervisor;
mod verify;

pub use builder::{parse_root_fingerprint, ServerBuilder, ServerOptions};
pub use csr::{der_to_pem, make_csr, make_csr_from, openssl_rsa_csr, pem_to_der, sans};
pub use external_root::{OfflineRoot, PendingCa};
pub use hsm::{private_key_labels, Token, SOFTHSM_MODULE, TOKEN_SIGNING_KEY_LABEL};
pub use http::{assert_well_formed, Auth, Holder, RequestBody, Response};
pub use jwt::{
    b64url, forge_alg_none, forge_foreign_ed25519, forge_hs256, jwt_header, jwt_segments,
    TestProvisioner,
};
pub use policy::{identity, policy_json};
pub use postgres::{TestDatabase, DEFAULT_POSTGRES_URL};
pub use process::{
    certmint_binary, hsm_sim_binary, hsm_sim_module, random_hex, server_binary, skip_unless_root,
    CommandOutput,
};
pub use replica::Replica;
pub use run::{run_test, run_test_on, shared_with_options};
pub use server::{Backend, Skip, TestServer};
pub use verify::{
    mtls_handshake, parse_certificate, pem_chain, verify_with_openssl, verify_with_webpki,
    EKU_CLIENT_AUTH, EKU_SERVER_AUTH,
};
