//! hsm-sim: a PKCS#11 v2.40 module that simulates an HSM, with fault
//! injection.
//!
//! # Design overview
//!
//! ```text
//!  application ──C_*──▶ ffi (the only unsafe code: pointers, lengths,
//!                        │   catch_unwind, CK_RV conversion)
//!                        ├─▶ faults (latency, failure rate, device removed,
//!                        │          session limit; re-read while running)
//!                        └─▶ token::Module (slots, tokens, sessions, objects,
//!                              │             login state; safe Rust)
//!                              ├─▶ mechanisms (keys, signatures, digests:
//!                              │               the system libcrypto)
//!                              └─▶ store (one JSON file per token; private
//!                                         keys sealed with AES-256-GCM under
//!                                         a key wrapped by PBKDF2(PIN))
//! ```
//!
//! The token model is plain Rust that unit tests drive directly; the C ABI
//! in [`ffi`] only checks pointers, copies arguments in and results out, and
//! converts [`Ckr`] into `CK_RV` in one place. Faults are applied there too,
//! before the real call, so every function can be made to fail.
//!
//! The `hsm-sim` binary (`src/main.rs`) initialises tokens, shows status
//! and sets or clears faults by writing the control file the module watches.
//! See `docs/HSM-SIM.md` for the environment, the configuration file, the
//! fault knobs and the on-disk format.

pub mod config;
pub mod error;
pub mod faults;
pub mod ffi;
pub mod mechanisms;
pub mod object;
pub mod store;
pub mod token;

pub use error::{Ckr, Result};
