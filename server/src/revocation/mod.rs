//! CRLs: encoding, signing schedule, serving.
//!
//! [`crl`] turns a list of revoked certificates into an RFC 5280 CRL signed
//! on the HSM through [`crate::hsm::CaSigner`]; nothing here reads keys.

pub mod crl;
