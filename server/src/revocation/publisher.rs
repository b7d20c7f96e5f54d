//! The CRL publisher: every replica runs one. It looks at the database
//! every `poll` interval, signs the shards that need a new CRL (a
//! revocation made them stale, they have none, or their newest is
//! `refresh` old), and keeps an in-memory snapshot of the newest CRL of
//! every shard for the HTTP handlers.
//!
//! Why polling: a revocation on any replica commits a shard generation
//! change, and the next look of whichever replica comes first signs it,
//! so the latency is one poll interval plus one signature wherever the
//! revocation came in. It also coalesces: all revocations of a shard
//! between two looks cost one signature. The store's claim keeps two
//! replicas from signing the same shard at once, and the database hands
//! out the CRL numbers, so any replica may sign and all serve the same
//! newest CRLs.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use certmint::wire::{CrlIndex, CrlScope, CrlSummary};
use time::OffsetDateTime;
use x509_cert::name::Name;

use super::crl::{self, CrlEntry, CrlTemplate};
use super::sharding::{crl_path, distribution_point};
use crate::clock::Clock;
use crate::error::ServiceError;
use crate::hsm::CaSigner;
use crate::metrics::CrlMetrics;
use crate::store::{CrlIssuerSetup, SignedCrl, Store, StoreError, StoredCrl};

/// How long a claim on a shard lasts when its signer dies mid-way.
const CLAIM_SECONDS: i64 = 60;

/// One issuer whose CRLs this replica signs.
pub struct CrlIssuer {
    /// Lower-case hex of its subject key identifier.
    pub key_id: String,
    /// Its subject (the CRLs' issuer).
    pub name: Name,
    /// Its key on the HSM.
    pub signer: Arc<dyn CaSigner>,
    /// Leaf CRLs (an issuing CA) or the CA-certificate CRL (a root).
    pub scope: CrlScope,
    /// Number of shards.
    pub shards: u32,
    /// For an issuing CA: the width of its shards' expiry windows (used to
    /// assign certificates recorded before CRLs existed).
    pub shard_width_seconds: Option<i64>,
    /// Base URL of its distribution points.
    pub base_url: String,
}

/// Timing of the publisher.
#[derive(Clone, Copy, Debug)]
pub struct PublisherSettings {
    /// nextUpdate - thisUpdate, seconds.
    pub next_update_seconds: i64,
    /// Re-sign a CRL this old, seconds.
    pub refresh_seconds: i64,
    /// Time between two looks at the database.
    pub poll: Duration,
}

/// One CRL as the handlers serve it.
#[derive(Clone, Debug)]
pub struct PublishedCrl {
    /// The DER.
    pub der: Arc<Vec<u8>>,
    /// Its index entry.
    pub summary: CrlSummary,
}

/// The newest CRL of every shard, as of the last look.
#[derive(Clone, Debug, Default)]
pub struct CrlSnapshot {
    /// `GET /v1/crls`.
    pub index: Vec<CrlSummary>,
    /// By `(issuer key id, shard)`.
    crls: HashMap<(String, u32), PublishedCrl>,
}

impl CrlSnapshot {
    /// The newest CRL of a shard.
    pub fn get(&self, issuer_key_id: &str, shard: u32) -> Option<&PublishedCrl> {
        self.crls.get(&(issuer_key_id.to_owned(), shard))
    }

    /// The index document.
    pub fn index(&self) -> CrlIndex {
        CrlIndex {
            crls: self.index.clone(),
        }
    }
}

/// Signs and serves CRLs; shared by the handlers and its own thread.
pub struct CrlPublisher {
    store: Store,
    issuers: Vec<CrlIssuer>,
    settings: PublisherSettings,
    clock: Arc<dyn Clock>,
    snapshot: RwLock<Arc<CrlSnapshot>>,
    metrics: CrlMetrics,
}

impl CrlPublisher {
    /// Prepares the issuers' rows in the database (and assigns shards to
    /// certificates recorded before CRLs existed), signs what needs signing
    /// and loads the first snapshot, so the server answers with CRLs from
    /// its first request. Only a database failure in the preparation stops
    /// the start.
    pub fn start(
        store: Store,
        issuers: Vec<CrlIssuer>,
        settings: PublisherSettings,
        clock: Arc<dyn Clock>,
        metrics: CrlMetrics,
    ) -> Result<Arc<CrlPublisher>, ServiceError> {
        for issuer in &issuers {
            store.set_up_crl_issuer(&CrlIssuerSetup {
                issuer_key_id: issuer.key_id.clone(),
                shards: issuer.shards,
                backfill_width_seconds: issuer.shard_width_seconds,
            })?;
        }
        let publisher = Arc::new(CrlPublisher {
            store,
            issuers,
            settings,
            clock,
            snapshot: RwLock::new(Arc::new(CrlSnapshot::default())),
            metrics,
        });
        // A CRL that cannot be signed now (a token hiccup) must not stop the
        // server: its thread tries again every look, and the metrics and
        // the log say so meanwhile.
        if let Err(error) = publisher.publish_due() {
            tracing::warn!(error = %error, "could not sign every CRL at start; retrying at the next look");
        }
        Ok(publisher)
    }

    /// The newest CRLs as of the last look.
    pub fn snapshot(&self) -> Arc<CrlSnapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs the publisher on a thread of its own for the life of the process.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let publisher = self.clone();
        std::thread::Builder::new()
            .name("crl-publisher".into())
            .spawn(move || loop {
                std::thread::sleep(publisher.settings.poll);
                if let Err(error) = publisher.publish_due() {
                    tracing::warn!(error = %error, "CRL publishing failed; retrying at the next look");
                }
            })
            .map(|_| ())
    }

    /// One look: signs every shard that needs it, then reloads the
    /// snapshot. Returns how many CRLs this replica signed.
    pub fn publish_due(&self) -> Result<usize, ServiceError> {
        let mut signed = 0;
        let mut first_error = None;
        // Reads first: a look that finds nothing to do writes nothing (on
        // SQLite every write is a durable commit on the one writer that
        // issuance uses too). The claim checks again in its transaction.
        let now = self.clock.now();
        let newest = self.store.newest_crls()?;
        let generations = self.store.crl_shard_generations()?;
        for issuer in &self.issuers {
            for shard in 0..issuer.shards {
                let generation = generations
                    .iter()
                    .find(|(key_id, number, _)| *key_id == issuer.key_id && *number == shard)
                    .map_or(0, |(_, _, generation)| *generation);
                let held = newest
                    .iter()
                    .find(|crl| crl.issuer_key_id == issuer.key_id && crl.shard == shard);
                let due = match held {
                    None => true,
                    Some(crl) => {
                        generation > crl.generation
                            || now.unix_timestamp()
                                >= crl
                                    .this_update
                                    .unix_timestamp()
                                    .saturating_add(self.settings.refresh_seconds)
                    }
                };
                if !due {
                    continue;
                }
                match self.publish_shard(issuer, shard) {
                    Ok(true) => {
                        signed += 1;
                        self.metrics.signed();
                    }
                    Ok(false) => {}
                    Err(error) => {
                        self.metrics.failed();
                        tracing::warn!(
                            crl.issuer = %issuer.key_id,
                            crl.shard = shard,
                            error = %error,
                            "could not sign a CRL"
                        );
                        first_error.get_or_insert(error);
                    }
                }
            }
        }
        // What this look read is still the newest unless it signed.
        self.reload_snapshot(if signed == 0 { Some(newest) } else { None })?;
        match first_error {
            Some(error) => Err(error),
            None => Ok(signed),
        }
    }

    /// Claims, signs and records one shard's CRL if it needs one.
    fn publish_shard(&self, issuer: &CrlIssuer, shard: u32) -> Result<bool, ServiceError> {
        let now = self.clock.now();
        let Some(claim) = self.store.claim_crl_shard(
            &issuer.key_id,
            shard,
            self.settings.refresh_seconds,
            CLAIM_SECONDS,
            now,
        )?
        else {
            return Ok(false);
        };
        let number = claim.number;
        let signed = self.sign_claimed(issuer, shard, claim, now);
        let crl = match signed {
            Ok(crl) => crl,
            Err(error) => {
                if let Err(release) = self.store.release_crl_claim(&issuer.key_id, shard, number) {
                    tracing::warn!(error = %release, "could not release a CRL claim; it runs out by itself");
                }
                return Err(error);
            }
        };
        self.store.record_crl(&crl)?;
        tracing::info!(
            crl.issuer = %issuer.key_id,
            crl.shard = shard,
            crl.number = crl.number,
            crl.entries = crl.entries,
            "CRL signed"
        );
        Ok(true)
    }

    fn sign_claimed(
        &self,
        issuer: &CrlIssuer,
        shard: u32,
        claim: crate::store::CrlClaim,
        now: OffsetDateTime,
    ) -> Result<SignedCrl, ServiceError> {
        let entries = claim
            .entries
            .iter()
            .map(|entry| {
                Ok(CrlEntry {
                    serial: hex::decode(&entry.serial).map_err(|_| StoreError::Corrupt {
                        what: format!("serial {:?}", entry.serial),
                    })?,
                    revoked_at: entry.revoked_at,
                    reason: entry.reason,
                    invalidity_date: entry.invalidity_date,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let count = entries.len() as u64;
        let next_update = now + time::Duration::seconds(self.settings.next_update_seconds);
        let template = CrlTemplate {
            issuer: issuer.name.clone(),
            issuer_key_identifier: hex::decode(&issuer.key_id).map_err(|_| {
                StoreError::Corrupt {
                    what: format!("issuer key id {:?}", issuer.key_id),
                }
            })?,
            number: claim.number,
            this_update: now,
            next_update,
            // CA certificates carry no distribution point, so the root's
            // CRL of them names none either (see `CrlTemplate`).
            distribution_point: match issuer.scope {
                CrlScope::UserCerts => {
                    Some(distribution_point(&issuer.base_url, &issuer.key_id, shard))
                }
                CrlScope::CaCerts => None,
            },
            scope: issuer.scope,
            entries,
        };
        let der = crl::sign(&template, issuer.signer.as_ref())?;
        let sha256 = format!(
            "sha256:{}",
            hex::encode(ring::digest::digest(&ring::digest::SHA256, &der))
        );
        Ok(SignedCrl {
            issuer_key_id: issuer.key_id.clone(),
            number: claim.number,
            shard,
            scope: issuer.scope,
            generation: claim.generation,
            this_update: now,
            next_update,
            entries: count,
            der,
            sha256,
        })
    }

    /// Loads the newest CRL of every shard (`newest`, or read again); DER
    /// is fetched only for CRLs the current snapshot does not hold already.
    fn reload_snapshot(&self, newest: Option<Vec<StoredCrl>>) -> Result<(), ServiceError> {
        let newest = match newest {
            Some(newest) => newest,
            None => self.store.newest_crls()?,
        };
        let current = self.snapshot();
        let mut crls = HashMap::with_capacity(newest.len());
        let mut index = Vec::with_capacity(newest.len());
        for stored in newest {
            let Some(issuer) = self
                .issuers
                .iter()
                .find(|i| i.key_id == stored.issuer_key_id)
            else {
                // Another replica's (or an earlier) issuer that this one no
                // longer signs for: served by the replicas that do.
                continue;
            };
            let der = match current.get(&stored.issuer_key_id, stored.shard) {
                Some(held) if held.summary.number == stored.number => held.der.clone(),
                _ => match self.store.crl_der(&stored.issuer_key_id, stored.number)? {
                    Some(der) => Arc::new(der),
                    // Pruned between the two reads: the next look has it.
                    None => continue,
                },
            };
            let summary = summary(issuer, &stored);
            index.push(summary.clone());
            crls.insert(
                (stored.issuer_key_id.clone(), stored.shard),
                PublishedCrl { der, summary },
            );
        }
        if let Some(oldest) = index.iter().map(|crl| crl.this_update).min() {
            self.metrics.oldest_this_update(oldest.unix_timestamp());
        }
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(CrlSnapshot { index, crls });
        Ok(())
    }
}

fn summary(issuer: &CrlIssuer, stored: &StoredCrl) -> CrlSummary {
    CrlSummary {
        issuer_key_id: stored.issuer_key_id.clone(),
        issuer_subject: issuer.name.to_string(),
        shard: stored.shard,
        scope: stored.scope,
        number: stored.number,
        this_update: stored.this_update,
        next_update: stored.next_update,
        revoked: stored.entries,
        path: crl_path(&stored.issuer_key_id, stored.shard),
        url: distribution_point(&issuer.base_url, &stored.issuer_key_id, stored.shard),
        sha256: stored.sha256.clone(),
    }
}
