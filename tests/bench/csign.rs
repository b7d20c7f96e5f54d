//! The token's raw `C_Sign` rate for the CA's issuing key.
//!
//! The same work the server does per certificate on the token: one
//! `CKM_ECDSA` signature over a host-computed SHA-256 digest, from T threads
//! with one session each, no HTTP, no database.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde::Serialize;

use crate::stats::PhaseResult;
use crate::BoxError;

/// Settings of the raw signing measurement.
pub struct SignSettings<'a> {
    /// PKCS#11 module.
    pub module: &'a Path,
    /// Token label.
    pub token_label: &'a str,
    /// Private key label.
    pub key_label: &'a str,
    /// User PIN.
    pub pin: String,
    /// Signatures in total (timed).
    pub signatures: usize,
    /// Threads, one session each.
    pub threads: usize,
}

/// The raw signing result.
#[derive(Debug, Clone, Serialize)]
pub struct SignResult {
    /// Threads (sessions) used.
    pub threads: usize,
    /// Throughput and per-call latency.
    pub result: PhaseResult,
}

/// A key on a token, and how to log in to it.
pub struct TokenKey<'a> {
    /// PKCS#11 module.
    pub module: &'a Path,
    /// Token label.
    pub token_label: &'a str,
    /// Label of the private key (and of its public key).
    pub key_label: &'a str,
    /// User PIN.
    pub pin: String,
}

impl TokenKey<'_> {
    /// A logged-in session on the key's token.
    fn session(&self) -> Result<Session, BoxError> {
        let (pkcs11, slot) = open_module(self.module, self.token_label)?;
        let session = pkcs11.open_ro_session(slot)?;
        session
            .login(UserType::User, Some(&AuthPin::from(self.pin.clone())))
            .map_err(|error| format!("C_Login: {error}"))?;
        Ok(session)
    }
}

/// One pure-EdDSA signature of `message` by the private key.
pub fn sign_ed25519(key: &TokenKey<'_>, message: &[u8]) -> Result<Vec<u8>, BoxError> {
    let session = key.session()?;
    let private = find_key(&session, key.key_label)?;
    let mechanism = Mechanism::Eddsa(cryptoki::mechanism::eddsa::EddsaParams::new(
        cryptoki::mechanism::eddsa::EddsaSignatureScheme::Pure,
    ));
    Ok(session.sign(&mechanism, private, message)?)
}

/// The raw 32-byte Ed25519 public key, from the public key object's
/// `CKA_EC_POINT` (an OCTET STRING, or the bare bytes on some tokens).
pub fn ed25519_public_key(key: &TokenKey<'_>) -> Result<Vec<u8>, BoxError> {
    use der::Decode as _;
    let session = key.session()?;
    let public = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(key.key_label.as_bytes().to_vec()),
        ])?
        .into_iter()
        .next()
        .ok_or_else(|| format!("no public key labelled {:?}", key.key_label))?;
    let point = session
        .get_attributes(public, &[cryptoki::object::AttributeType::EcPoint])?
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::EcPoint(point) => Some(point),
            _ => None,
        })
        .ok_or("the public key has no CKA_EC_POINT")?;
    match der::asn1::OctetString::from_der(&point) {
        Ok(octets) => Ok(octets.as_bytes().to_vec()),
        Err(_) => Ok(point),
    }
}

/// Loads and initializes `module` and finds the token labelled `token_label`.
fn open_module(module: &Path, token_label: &str) -> Result<(Pkcs11, Slot), BoxError> {
    let pkcs11 = Pkcs11::new(module).map_err(|e| format!("loading {}: {e}", module.display()))?;
    pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let slot = find_slot(&pkcs11, token_label)?;
    Ok((pkcs11, slot))
}

/// Measures `C_Sign` throughput.
pub fn measure(settings: &SignSettings<'_>) -> Result<SignResult, BoxError> {
    let (pkcs11, slot) = open_module(settings.module, settings.token_label)?;
    let pin = AuthPin::from(settings.pin.clone());
    let threads = settings.threads.max(1);

    // Open every session and log in before timing.
    let mut sessions = Vec::with_capacity(threads);
    for _ in 0..threads {
        let session = pkcs11.open_ro_session(slot)?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(error) => return Err(format!("C_Login: {error}").into()),
        }
        sessions.push(session);
    }
    let key = find_key(&sessions[0], settings.key_label)?;

    let digests: Vec<[u8; 32]> = (0..settings.signatures)
        .map(|i| {
            let digest = ring::digest::digest(&ring::digest::SHA256, &i.to_be_bytes());
            let mut bytes = [0u8; 32];
            bytes.copy_from_slice(digest.as_ref());
            bytes
        })
        .collect();
    let next = AtomicUsize::new(0);
    let barrier = Barrier::new(threads + 1);
    let (results, elapsed) = std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .into_iter()
            .map(|session| {
                let (next, barrier, digests) = (&next, &barrier, &digests);
                scope.spawn(move || sign_loop(&session, key, digests, next, barrier))
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let results: Vec<Result<Vec<Duration>, String>> = handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("signing thread panicked".into()))
            })
            .collect();
        (results, started.elapsed())
    });
    let mut latencies = Vec::with_capacity(settings.signatures);
    for result in results {
        latencies.extend(result?);
    }
    Ok(SignResult {
        threads,
        result: PhaseResult::new(latencies, elapsed),
    })
}

fn sign_loop(
    session: &Session,
    key: ObjectHandle,
    digests: &[[u8; 32]],
    next: &AtomicUsize,
    barrier: &Barrier,
) -> Result<Vec<Duration>, String> {
    // A few untimed signatures first (per-session state, caches).
    let warm = (0..3).try_for_each(|_| {
        session
            .sign(&Mechanism::Ecdsa, key, &[7u8; 32])
            .map(drop)
            .map_err(|e| format!("C_Sign (warm-up): {e}"))
    });
    barrier.wait();
    warm?;
    let mut latencies = Vec::new();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(digest) = digests.get(index) else {
            break;
        };
        let started = Instant::now();
        session
            .sign(&Mechanism::Ecdsa, key, digest)
            .map_err(|e| format!("C_Sign: {e}"))?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

fn find_slot(pkcs11: &Pkcs11, label: &str) -> Result<Slot, BoxError> {
    for slot in pkcs11.get_slots_with_token()? {
        let info = pkcs11.get_token_info(slot)?;
        if info.token_initialized() && info.label().trim_end_matches([' ', '\0']) == label {
            return Ok(slot);
        }
    }
    Err(format!("no initialized token labelled {label:?}").into())
}

fn find_key(session: &Session, label: &str) -> Result<ObjectHandle, BoxError> {
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    match found.as_slice() {
        [key] => Ok(*key),
        [] => Err(format!("no private key labelled {label:?} on the token").into()),
        _ => Err(format!("{} private keys labelled {label:?}", found.len()).into()),
    }
}
