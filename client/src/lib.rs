//! certmint SDK: the wire types of the certmint REST API, shared by the server
//! and every client so the two can never drift.
//!
//! Design overview:
//!
//! ```text
//!   certmint (agent, admin CLI) ──┐
//!                                 ├── certmint::wire   (requests, responses)
//!   certmint-server (api layer) ──┘   certmint::problem (stable problem codes)
//!                                     certmint::audit   (the audit hash chain)
//! ```
//!
//! Everything here is plain data with serde derives. Fields may be added in a
//! later version, never removed or renamed: clients ignore unknown fields and
//! [`problem::ProblemCode`] keeps codes it does not know.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
#[cfg(feature = "client")]
pub mod client;
pub mod duration;
#[cfg(feature = "client")]
pub mod mtls;
pub mod problem;
pub mod wire;

pub use duration::Duration;
pub use problem::{Problem, ProblemCode};
