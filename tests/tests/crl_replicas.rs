//! Two replicas on one PostgreSQL database and one HSM token, revoking at
//! the same time: the database hands out CRL numbers and lets one replica
//! sign a shard at a time, so whatever replica signs, relying parties see
//! one sequence of CRLs.
//!
//! Several threads revoke certificates of four shards, each revocation on
//! one replica or the other, while a watcher collects every CRL either
//! replica serves (its index and its CRL URLs). Then, per issuer, every
//! cRLNumber names one CRL (same shard, same bytes wherever it was seen);
//! within a shard a higher number lists every serial a lower one did; no
//! replica ever goes back to an older CRL; and within 5 s of the last
//! revocation both replicas serve, byte for byte, the same CRLs, which list
//! every certificate revoked on either replica in the shard its
//! certificate names.
//!
//! PostgreSQL only (SQLite is one process's file): skipped with a note when
//! PostgreSQL is unreachable, a failure when `CERTMINT_REQUIRE_POSTGRES=1`,
//! as every PostgreSQL test here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use certmint::wire::{CrlIndex, CrlScope};
use certmint_e2e::{
    identity, make_csr, parse_certificate, pem_chain, policy_json, run_test_on, Backend, Response,
    TestServer,
};
use der::asn1::ObjectIdentifier;
use der::Decode as _;
use serde_json::json;
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::crl::CrlDistributionPoints;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::CrlNumber;

/// The bound the server promises between a revocation and a served CRL
/// that lists it, on every replica.
const REVOCATION_VISIBLE_WITHIN: Duration = Duration::from_secs(5);
/// Certificates revoked; spread over [`LIFETIMES`], so over four shards.
const REVOCATIONS: usize = 40;
/// Threads revoking at once; each alternates between the replicas.
const THREADS: usize = 4;
/// Certificate lifetimes a whole 6 h shard width apart: with the default
/// 16 shards of 6 h, each lands in a shard of its own.
const LIFETIMES: [&str; 4] = ["2h", "8h", "14h", "20h"];
/// id-ce-cRLNumber (RFC 5280 §5.2.3).
const CRL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.20");
/// Time between two looks of the watcher.
const WATCH_EVERY: Duration = Duration::from_millis(50);

#[test]
fn ok_two_replicas_revoking_at_once_serve_one_sequence_of_crls() {
    let server = TestServer::start(Backend::Postgres);
    run_test_on(
        server.as_ref(),
        "ok_two_replicas_revoking_at_once_serve_one_sequence_of_crls",
        two_replicas_revoking,
    );
}

/// One certificate to revoke: its serial (normalised) and the path of the
/// CRL its distribution point names.
#[derive(Debug, Clone)]
struct Revocable {
    serial: String,
    /// As the server answered it (the admin API's key).
    serial_as_issued: String,
    crl_path: String,
}

/// One CRL as one replica served it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    replica: usize,
    issuer_key_id: String,
    shard: u32,
    number: u64,
    der: Vec<u8>,
}

fn two_replicas_revoking(server: &TestServer) {
    let replica = server.start_replica();
    let crl_bases = [server.crl_url().to_owned(), replica.crl_url().to_owned()];
    let revocables = enroll(server);
    let shards: BTreeSet<&str> = revocables.iter().map(|r| r.crl_path.as_str()).collect();
    assert_eq!(
        shards.len(),
        LIFETIMES.len(),
        "one shard per lifetime: {shards:?}"
    );

    let done = AtomicBool::new(false);
    let seen: Mutex<Vec<Seen>> = Mutex::new(Vec::new());
    let index_seen: Mutex<Vec<(usize, CrlIndex)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                for (which, base) in crl_bases.iter().enumerate() {
                    let (index, crls) = look(server, which, base);
                    index_seen.lock().expect("lock").push((which, index));
                    seen.lock().expect("lock").extend(crls);
                }
                std::thread::sleep(WATCH_EVERY);
            }
        });
        let revokers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (revocables, replica) = (&revocables, &replica);
                scope.spawn(move || {
                    for (n, revocable) in
                        revocables.iter().enumerate().skip(thread).step_by(THREADS)
                    {
                        let path = format!(
                            "/v1/admin/certificates/{}/revoke",
                            revocable.serial_as_issued
                        );
                        let body = json!({"reason": "superseded"});
                        let response: Response = if n % 2 == 0 {
                            server.admin_post(&path, &body)
                        } else {
                            replica.admin_post(&path, &body)
                        };
                        response.assert_status(200);
                    }
                    Instant::now()
                })
            })
            .collect();
        let last = revokers
            .into_iter()
            .map(|revoker| revoker.join().expect("revoking thread"))
            .max()
            .expect("revoking threads");
        let settled = wait_until_settled(server, &crl_bases, &revocables, last);
        eprintln!("both replicas served every revocation {settled:?} after the last one");
        done.store(true, Ordering::Relaxed);
        watcher.join().expect("watcher thread");
    });
    // One last look, after the settled state was seen.
    for (which, base) in crl_bases.iter().enumerate() {
        let (index, crls) = look(server, which, base);
        index_seen.lock().expect("lock").push((which, index));
        seen.lock().expect("lock").extend(crls);
    }
    let seen = seen.into_inner().expect("lock");
    let index_seen = index_seen.into_inner().expect("lock");
    check_one_sequence(&seen, &index_seen);
    let signed_on = |log: String| log.matches("CRL signed").count();
    eprintln!(
        "{} CRLs seen; the first replica signed {} CRLs, the second {}",
        seen.len(),
        signed_on(server.log_since(0)),
        signed_on(replica.log_since(0)),
    );
}

/// Enrolls [`REVOCATIONS`] certificates, spread over [`LIFETIMES`].
fn enroll(server: &TestServer) -> Vec<Revocable> {
    let policy = server.unique("replicas");
    server.create_policy(&policy_json(&policy, &["*.replicas.internal"], &[], &[]));
    let uses = u32::try_from(REVOCATIONS).expect("small");
    let minted = server.mint_token(&policy, &identity(&["*.replicas.internal"], &[], &[]), uses);
    (0..REVOCATIONS)
        .map(|n| {
            let name = format!("r{n}.replicas.internal");
            let (csr, _key) = make_csr("ec-p256", &[&name], &[], &[]);
            let response = server.enroll_with(&json!({
                "csr": csr,
                "token": minted.token,
                "ttl": LIFETIMES[n % LIFETIMES.len()],
            }));
            response.assert_status(201);
            let serial = response.body["serial"]
                .as_str()
                .expect("a serial")
                .to_owned();
            let certificate = response.body["certificate_pem"]
                .as_str()
                .expect("a certificate");
            Revocable {
                serial: normalised(&serial),
                serial_as_issued: serial,
                crl_path: crl_path(certificate),
            }
        })
        .collect()
}

/// The path of the one CRL distribution point of a PEM certificate.
fn crl_path(certificate_pem: &str) -> String {
    let der = &pem_chain(certificate_pem)[0];
    let certificate = parse_certificate(der);
    let (_, points) = certificate
        .tbs_certificate()
        .get_extension::<CrlDistributionPoints>()
        .expect("extensions decode")
        .expect("a CRL Distribution Points extension");
    let [point] = points.0.as_slice() else {
        panic!("one distribution point expected: {points:?}");
    };
    let Some(DistributionPointName::FullName(names)) = &point.distribution_point else {
        panic!("a full name expected: {point:?}");
    };
    let [GeneralName::UniformResourceIdentifier(uri)] = names.as_slice() else {
        panic!("one URI expected: {names:?}");
    };
    let uri = uri.to_string();
    let path_start = uri
        .find("/crl/")
        .unwrap_or_else(|| panic!("a CRL path in {uri}"));
    uri[path_start..].to_owned()
}

/// One look at a replica: its index, and every CRL it names, fetched from
/// the same replica's CRL listener.
fn look(server: &TestServer, replica: usize, base: &str) -> (CrlIndex, Vec<Seen>) {
    let (status, _, body) = server.fetch(&format!("{base}/v1/crls"), &[]);
    assert_eq!(status, 200, "GET {base}/v1/crls");
    let index: CrlIndex = serde_json::from_slice(&body).expect("a CRL index");
    let crls = index
        .crls
        .iter()
        .map(|summary| {
            let url = format!("{base}{}", summary.path);
            let (status, _, der) = server.fetch(&url, &[]);
            assert_eq!(status, 200, "GET {url}");
            Seen {
                replica,
                issuer_key_id: summary.issuer_key_id.clone(),
                shard: summary.shard,
                number: crl_number(&der),
                der,
            }
        })
        .collect();
    (index, crls)
}

/// Waits until both replicas serve identical CRLs that list every
/// revocation in its certificate's shard; returns how long after `since`.
fn wait_until_settled(
    server: &TestServer,
    bases: &[String; 2],
    revocables: &[Revocable],
    since: Instant,
) -> Duration {
    loop {
        let Err(last_difference) = settled(server, bases, revocables) else {
            return since.elapsed();
        };
        assert!(
            since.elapsed() < REVOCATION_VISIBLE_WITHIN,
            "{REVOCATION_VISIBLE_WITHIN:?} after the last revocation the replicas still differ: {last_difference}"
        );
        std::thread::sleep(WATCH_EVERY);
    }
}

fn settled(
    server: &TestServer,
    bases: &[String; 2],
    revocables: &[Revocable],
) -> Result<(), String> {
    let fetch = |base: &str, path: &str| {
        let (status, _, der) = server.fetch(&format!("{base}{path}"), &[]);
        assert_eq!(status, 200, "GET {base}{path}");
        der
    };
    let paths: BTreeSet<&str> = revocables.iter().map(|r| r.crl_path.as_str()).collect();
    for path in paths {
        let first = fetch(&bases[0], path);
        let second = fetch(&bases[1], path);
        if first != second {
            return Err(format!(
                "{path}: number {} on the first replica, {} on the second",
                crl_number(&first),
                crl_number(&second)
            ));
        }
        let listed = listed_serials(&first);
        let missing: Vec<&str> = revocables
            .iter()
            .filter(|r| r.crl_path == path && !listed.contains(&r.serial))
            .map(|r| r.serial.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{path} (number {}) lacks {missing:?}",
                crl_number(&first)
            ));
        }
    }
    Ok(())
}

/// The checks on everything the watcher saw.
fn check_one_sequence(seen: &[Seen], indexes: &[(usize, CrlIndex)]) {
    // A number names one CRL of one shard, wherever and whenever seen.
    let mut by_number: BTreeMap<(&str, u64), &Seen> = BTreeMap::new();
    for crl in seen {
        let earlier = by_number
            .entry((crl.issuer_key_id.as_str(), crl.number))
            .or_insert(crl);
        assert!(
            earlier.shard == crl.shard && earlier.der == crl.der,
            "issuer {} CRL number {} names two CRLs: shard {} (replica {}) and shard {} (replica {})",
            crl.issuer_key_id,
            crl.number,
            earlier.shard,
            earlier.replica,
            crl.shard,
            crl.replica
        );
    }
    // The indexes agree with the CRLs they name.
    for (replica, index) in indexes {
        for summary in &index.crls {
            if let Some(crl) = by_number.get(&(summary.issuer_key_id.as_str(), summary.number)) {
                assert_eq!(
                    (crl.shard, summary.sha256.clone()),
                    (summary.shard, sha256(&crl.der)),
                    "replica {replica}'s index entry {summary:?} names another CRL"
                );
            }
        }
    }
    // Within a shard, a higher number lists everything a lower one did.
    let mut by_shard: BTreeMap<(&str, u32), Vec<(u64, Serials)>> = BTreeMap::new();
    for ((issuer, number), crl) in &by_number {
        by_shard
            .entry((issuer, crl.shard))
            .or_default()
            .push((*number, listed_serials(&crl.der)));
    }
    let mut numbers_moved = 0;
    for ((issuer, shard), crls) in &by_shard {
        for pair in crls.windows(2) {
            let [(lower, lower_serials), (higher, higher_serials)] = pair else {
                unreachable!("windows of two");
            };
            let lost: Vec<_> = lower_serials.difference(higher_serials).collect();
            assert!(
                lost.is_empty(),
                "issuer {issuer} shard {shard}: CRL {higher} drops {lost:?} that CRL {lower} listed"
            );
            numbers_moved += 1;
        }
    }
    assert!(
        numbers_moved >= LIFETIMES.len(),
        "the revoked shards got new CRLs while the watcher looked: {by_shard:?}"
    );
    // No replica ever goes back to an older CRL of a shard.
    let mut newest: BTreeMap<(usize, &str, u32), u64> = BTreeMap::new();
    for crl in seen {
        let held = newest
            .entry((crl.replica, crl.issuer_key_id.as_str(), crl.shard))
            .or_insert(crl.number);
        assert!(
            crl.number >= *held,
            "replica {} served CRL {} of shard {} after CRL {held}",
            crl.replica,
            crl.number,
            crl.shard
        );
        *held = crl.number;
    }
    // Both replicas' indexes list the same shards.
    let shards_of = |replica: usize| -> BTreeSet<(String, u32, bool)> {
        indexes
            .iter()
            .filter(|(which, _)| *which == replica)
            .flat_map(|(_, index)| {
                index.crls.iter().map(|crl| {
                    (
                        crl.issuer_key_id.clone(),
                        crl.shard,
                        crl.scope == CrlScope::CaCerts,
                    )
                })
            })
            .collect()
    };
    assert_eq!(
        shards_of(0),
        shards_of(1),
        "both replicas serve the same shards"
    );
}

/// The cRLNumber of a DER CRL.
fn crl_number(der: &[u8]) -> u64 {
    let crl: CertificateList = CertificateList::from_der(der).expect("the CRL parses");
    let extension = crl
        .tbs_cert_list
        .crl_extensions
        .iter()
        .flatten()
        .find(|extension| extension.extn_id == CRL_NUMBER)
        .expect("a cRLNumber extension");
    let number = CrlNumber::from_der(extension.extn_value.as_bytes()).expect("a cRLNumber");
    number
        .0
        .as_bytes()
        .iter()
        .try_fold(0u64, |value, byte| {
            value.checked_mul(256).map(|value| value + u64::from(*byte))
        })
        .expect("a cRLNumber that fits 64 bits")
}

/// Normalised hex serials.
type Serials = BTreeSet<String>;

/// Normalised hex serials a DER CRL lists.
fn listed_serials(der: &[u8]) -> Serials {
    let crl: CertificateList = CertificateList::from_der(der).expect("the CRL parses");
    crl.tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .map(|entry| normalised(&hex::encode(entry.serial_number.as_bytes())))
        .collect()
}

/// Lower-case hex without leading zeros.
fn normalised(serial: &str) -> String {
    serial.trim_start_matches('0').to_ascii_lowercase()
}

fn sha256(der: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
    )
}
