//! The audit log's vocabulary and its hash chain, as pure code.
//!
//! Every state change certmint makes (a policy version, a token minted or
//! revoked, a certificate about to be signed, issued, failed or revoked, the
//! CA set up) is recorded as an [`AuditEvent`] in the same database
//! transaction as the change itself; `store` does the writing. This module
//! only defines the event kinds, the input shape [`NewAuditEvent`], and the
//! chain: each event's `hash` is [`chain_hash`] over the previous event's
//! hash and this event's fields, so that editing, removing or reordering a
//! stored event is detected by [`verify_chain`].
//!
//! Invariants: no I/O here; an event's `data` never holds a secret (no JWT,
//! PIN or private key), only identifiers and facts.
//!
//! # Hash encoding (version 1)
//!
//! `hash = hex(SHA-256(encoding))`, lower-case, where `encoding` is the
//! domain tag `certmint-audit-v1` followed by seven fields, each written as
//! its length in bytes (8 bytes, big-endian) followed by its bytes:
//!
//! 1. `prev_hash`, the previous event's hash as lower-case hex ASCII
//!    ([`GENESIS_HASH`], 64 zeros, for the first event);
//! 2. `seq`, 8 bytes big-endian two's complement;
//! 3. `at`, unix seconds, 8 bytes big-endian two's complement;
//! 4. `kind`, UTF-8;
//! 5. `actor`, UTF-8;
//! 6. `subject`, UTF-8;
//! 7. `data`, the canonical JSON of the event data ([`canonical_json`]):
//!    object keys sorted by their UTF-8 bytes, no insignificant whitespace,
//!    serde_json's number and string formatting.
//!
//! Length prefixes make the encoding injective: no two different events
//! share an encoding, whatever bytes their fields contain.

use std::fmt::Write as _;

use certmint::wire::AuditEvent;
use ring::digest;
use serde_json::Value;

/// A new policy (version 1) was created.
pub const POLICY_CREATED: &str = "policy.created";
/// A policy was replaced by a new version.
pub const POLICY_REPLACED: &str = "policy.replaced";
/// A policy was disabled (a new version with `enabled: false`).
pub const POLICY_DISABLED: &str = "policy.disabled";
/// A bootstrap token was minted (never with the JWT itself).
pub const TOKEN_MINTED: &str = "token.minted";
/// A bootstrap token was revoked.
pub const TOKEN_REVOKED: &str = "token.revoked";
/// An external token issuer was registered.
pub const PROVISIONER_REGISTERED: &str = "provisioner.registered";
/// A provisioner was disabled; its tokens are refused from then on.
pub const PROVISIONER_DISABLED: &str = "provisioner.disabled";
/// A certificate was recorded and is about to be signed on the HSM.
pub const CERTIFICATE_SIGNING: &str = "certificate.signing";
/// A signed certificate was recorded as issued.
pub const CERTIFICATE_ISSUED: &str = "certificate.issued";
/// Signing failed; no certificate exists for the serial.
pub const CERTIFICATE_FAILED: &str = "certificate.failed";
/// A certificate was revoked.
pub const CERTIFICATE_REVOKED: &str = "certificate.revoked";
/// An issued certificate was delivered again to a retry of the enrollment
/// that made it (same token, same key) whose response was lost.
pub const CERTIFICATE_REDELIVERED: &str = "certificate.redelivered";
/// The CA's keys and certificates were recorded.
pub const CA_INITIALIZED: &str = "ca.initialized";
/// An externally signed issuing certificate completed a pending CA set-up.
pub const CA_IMPORTED: &str = "ca.imported";

/// `prev_hash` of the first event in the chain: 64 hex zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation tag at the start of every hashed encoding.
const DOMAIN_TAG: &[u8] = b"certmint-audit-v1";

/// An event to append: the store assigns `seq`, `at`, `prev_hash` and `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAuditEvent {
    /// One of the kind constants in this module, e.g. [`POLICY_CREATED`].
    pub kind: String,
    /// Who: `admin:<subject>`, `token:<id>`, `system`.
    pub actor: String,
    /// What the event is about: a policy name, token id or serial.
    pub subject: String,
    /// Details (identifiers and facts, never secrets).
    pub data: Value,
}

impl NewAuditEvent {
    /// Builds an event from borrowed parts.
    pub fn new(kind: &str, actor: &str, subject: &str, data: Value) -> Self {
        Self {
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            subject: subject.to_owned(),
            data,
        }
    }
}

/// The first event at which a chain fails to verify, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at seq {seq}: {reason}")]
pub struct AuditChainError {
    /// Sequence number of the first event that does not verify.
    pub seq: i64,
    /// What is wrong with it.
    pub reason: ChainBreak,
}

/// Ways an audit chain can fail to verify.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainBreak {
    /// The event's stored hash is not the hash of its contents.
    HashMismatch,
    /// The event's `prev_hash` is not the previous event's `hash`.
    PrevHashMismatch,
    /// The event's `seq` does not follow the previous event's.
    SequenceGap,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::HashMismatch => "stored hash does not match the event's contents",
            Self::PrevHashMismatch => "prev_hash does not match the previous event's hash",
            Self::SequenceGap => "sequence number does not follow the previous event",
        })
    }
}

/// Computes an event's chain hash (see the module doc for the encoding).
///
/// `data_canonical_json` must be the output of [`canonical_json`].
pub fn chain_hash(
    prev_hash_hex: &str,
    seq: i64,
    at_unix: i64,
    kind: &str,
    actor: &str,
    subject: &str,
    data_canonical_json: &str,
) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(DOMAIN_TAG);
    for field in [
        prev_hash_hex.as_bytes(),
        &seq.to_be_bytes(),
        &at_unix.to_be_bytes(),
        kind.as_bytes(),
        actor.as_bytes(),
        subject.as_bytes(),
        data_canonical_json.as_bytes(),
    ] {
        // usize -> u64 never truncates on the platforms Rust supports.
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field);
    }
    hex::encode(ctx.finish().as_ref())
}

/// Serialises JSON canonically: object keys sorted by their UTF-8 bytes, no
/// whitespace. Independent of serde_json's `preserve_order` feature.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut String) {
    // `Display` for a scalar `Value` is serde_json's compact serialisation,
    // which cannot fail for scalars.
    let _ = write!(out, "{value}");
}

/// Recomputes the hash of one stored event.
pub fn event_hash(event: &AuditEvent) -> String {
    chain_hash(
        &event.prev_hash,
        event.seq,
        event.at.unix_timestamp(),
        &event.kind,
        &event.actor,
        &event.subject,
        &canonical_json(&event.data),
    )
}

/// Verifies a run of consecutive events, in ascending `seq` order.
///
/// Each event's hash must match its contents and each `prev_hash` the hash
/// before it. The first event of the slice anchors the run: when its `seq` is
/// 1, its `prev_hash` must be [`GENESIS_HASH`]; otherwise it is trusted as
/// given (so one page of a longer log can be checked on its own). An empty
/// slice verifies.
pub fn verify_chain(events: &[AuditEvent]) -> Result<(), AuditChainError> {
    let mut previous: Option<&AuditEvent> = None;
    for event in events {
        let expected_prev = match previous {
            Some(prev) => {
                if event.seq != prev.seq.wrapping_add(1) {
                    return Err(AuditChainError {
                        seq: event.seq,
                        reason: ChainBreak::SequenceGap,
                    });
                }
                Some(prev.hash.as_str())
            }
            None if event.seq == 1 => Some(GENESIS_HASH),
            None => None,
        };
        if let Some(expected) = expected_prev {
            if event.prev_hash != expected {
                return Err(AuditChainError {
                    seq: event.seq,
                    reason: ChainBreak::PrevHashMismatch,
                });
            }
        }
        if event_hash(event) != event.hash {
            return Err(AuditChainError {
                seq: event.seq,
                reason: ChainBreak::HashMismatch,
            });
        }
        previous = Some(event);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let at =
                    OffsetDateTime::from_unix_timestamp(1_700_000_000 + seq).expect("valid time");
                let data = json!({"b": seq, "a": [1, {"z": null, "y": "x"}]});
                let hash = chain_hash(
                    &prev,
                    seq,
                    at.unix_timestamp(),
                    POLICY_CREATED,
                    "admin:alice",
                    "payments",
                    &canonical_json(&data),
                );
                let event = AuditEvent {
                    seq,
                    at,
                    kind: POLICY_CREATED.to_owned(),
                    actor: "admin:alice".to_owned(),
                    subject: "payments".to_owned(),
                    data,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                event
            })
            .collect()
    }

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let value: Value =
            serde_json::from_str(r#"{ "b": 1, "a": {"d": [true, null], "c": "\u00e9\n"} }"#)
                .expect("valid json");
        assert_eq!(
            canonical_json(&value),
            "{\"a\":{\"c\":\"\u{e9}\\n\",\"d\":[true,null]},\"b\":1}"
        );
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let one = chain_hash(GENESIS_HASH, 1, 0, "ab", "c", "", "{}");
        let two = chain_hash(GENESIS_HASH, 1, 0, "a", "bc", "", "{}");
        assert_ne!(one, two);
        assert_eq!(one.len(), 64);
    }

    #[test]
    fn ok_chain_verifies_whole_and_from_the_middle() {
        let events = chain(5);
        assert_eq!(verify_chain(&events), Ok(()));
        assert_eq!(verify_chain(&events[2..]), Ok(()));
        assert_eq!(verify_chain(&[]), Ok(()));
    }

    #[test]
    fn fail_edited_data_is_detected() {
        let mut events = chain(4);
        events[2].data = json!({"b": 99});
        let err = verify_chain(&events).expect_err("tampered");
        assert_eq!((err.seq, err.reason), (3, ChainBreak::HashMismatch));
    }

    #[test]
    fn fail_removed_event_is_detected() {
        let mut events = chain(4);
        events.remove(1);
        let err = verify_chain(&events).expect_err("gap");
        assert_eq!((err.seq, err.reason), (3, ChainBreak::SequenceGap));
    }

    #[test]
    fn fail_rehashed_event_breaks_the_link() {
        let mut events = chain(4);
        events[1].actor = "admin:mallory".to_owned();
        events[1].hash = event_hash(&events[1]);
        let err = verify_chain(&events).expect_err("relinked");
        assert_eq!((err.seq, err.reason), (3, ChainBreak::PrevHashMismatch));
    }

    #[test]
    fn fail_first_event_must_start_at_genesis() {
        let mut events = chain(2);
        events[0].prev_hash = "ff".repeat(32);
        events[0].hash = event_hash(&events[0]);
        let err = verify_chain(&events).expect_err("bad genesis");
        assert_eq!((err.seq, err.reason), (1, ChainBreak::PrevHashMismatch));
    }
}
