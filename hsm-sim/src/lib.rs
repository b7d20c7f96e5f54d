//! hsm-sim: a PKCS#11 module that simulates an HSM and injects faults.
//!
//! Not built yet: issue 5 turns this crate into a `cdylib` exporting
//! `C_GetFunctionList`. Until then certmint's default token is SoftHSM2.
