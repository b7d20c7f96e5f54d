//! Tests of the configurations and their reloads against a PKI made with
//! rcgen: root → issuing CA → leaves, a CRL per issuer with an Issuing
//! Distribution Point, leaves carrying the matching CRL distribution point,
//! like the certmint server issues them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationList,
    CertificateRevocationListParams, CrlDistributionPoint, CrlIssuingDistributionPoint, CrlScope,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::CertificateError;

use super::hooks::SessionGeneration;
use super::watch::Watched;
use super::*;

const ROOT_CRL_URL: &str = "http://crl.test/crl/root/0.crl";
const ISSUING_CRL_URL: &str = "http://crl.test/crl/issuing/0.crl";

static SERIALS: AtomicU64 = AtomicU64::new(1000);

/// A root, an issuing CA below it, and leaves from the issuing CA.
pub(super) struct Pki {
    pub(super) root: rcgen::Certificate,
    root_issuer: Issuer<'static, KeyPair>,
    pub(super) issuing: rcgen::Certificate,
    issuing_serial: SerialNumber,
    issuing_issuer: Issuer<'static, KeyPair>,
}

/// A leaf: its PEM chain (leaf, issuing CA, root) and key.
pub(super) struct Leaf {
    pub(super) chain_pem: String,
    pub(super) key_pem: String,
    pub(super) der: CertificateDer<'static>,
    pub(super) serial: SerialNumber,
}

impl Pki {
    pub(super) fn new() -> Self {
        Self::named("certmint test root")
    }

    pub(super) fn named(root_name: &str) -> Self {
        let root_key = KeyPair::generate().expect("root key");
        let mut root_params = CertificateParams::new(Vec::new()).expect("root params");
        root_params
            .distinguished_name
            .push(DnType::CommonName, root_name);
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        root_params.key_identifier_method = KeyIdMethod::Sha256;
        let root = root_params.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(root_params, root_key);

        let issuing_key = KeyPair::generate().expect("issuing key");
        let issuing_serial = next_serial();
        let mut issuing_params = CertificateParams::new(Vec::new()).expect("issuing params");
        issuing_params
            .distinguished_name
            .push(DnType::CommonName, format!("{root_name} issuing CA"));
        issuing_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        issuing_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        issuing_params.serial_number = Some(issuing_serial.clone());
        issuing_params.use_authority_key_identifier_extension = true;
        issuing_params.key_identifier_method = KeyIdMethod::Sha256;
        issuing_params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![ROOT_CRL_URL.into()],
        }];
        let issuing = issuing_params
            .signed_by(&issuing_key, &root_issuer)
            .expect("issuing CA");
        let issuing_issuer = Issuer::new(issuing_params, issuing_key);
        Self {
            root,
            root_issuer,
            issuing,
            issuing_serial,
            issuing_issuer,
        }
    }

    pub(super) fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let serial = next_serial();
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("leaf params");
        params.serial_number = Some(serial.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![ISSUING_CRL_URL.into()],
        }];
        let cert = params.signed_by(&key, &self.issuing_issuer).expect("leaf");
        Leaf {
            chain_pem: format!("{}{}{}", cert.pem(), self.issuing.pem(), self.root.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial,
        }
    }

    /// The root's CRL of CA certificates; revokes the issuing CA if asked.
    pub(super) fn root_crl(&self, revoke_issuing: bool) -> CertificateRevocationList {
        let revoked = if revoke_issuing {
            vec![self.issuing_serial.clone()]
        } else {
            Vec::new()
        };
        crl(
            &self.root_issuer,
            ROOT_CRL_URL,
            CrlScope::CaCertsOnly,
            &revoked,
            1,
            fresh(),
        )
    }

    /// The issuing CA's CRL of leaves.
    pub(super) fn issuing_crl(
        &self,
        revoked: &[&Leaf],
        validity: (time::OffsetDateTime, time::OffsetDateTime),
    ) -> CertificateRevocationList {
        let serials: Vec<SerialNumber> = revoked.iter().map(|leaf| leaf.serial.clone()).collect();
        crl(
            &self.issuing_issuer,
            ISSUING_CRL_URL,
            CrlScope::UserCertsOnly,
            &serials,
            SERIALS.fetch_add(1, Ordering::Relaxed),
            validity,
        )
    }

    /// Both CRLs, as the agent writes `crl.pem`.
    pub(super) fn crl_pem(&self, revoked: &[&Leaf]) -> String {
        format!(
            "{}{}",
            self.root_crl(false).pem().expect("pem"),
            self.issuing_crl(revoked, fresh()).pem().expect("pem")
        )
    }
}

fn next_serial() -> SerialNumber {
    SerialNumber::from(SERIALS.fetch_add(1, Ordering::Relaxed))
}

pub(super) fn fresh() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::minutes(1),
        now + time::Duration::days(1),
    )
}

fn crl(
    issuer: &Issuer<'static, KeyPair>,
    url: &str,
    scope: CrlScope,
    revoked: &[SerialNumber],
    number: u64,
    (this_update, next_update): (time::OffsetDateTime, time::OffsetDateTime),
) -> CertificateRevocationList {
    CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: Some(CrlIssuingDistributionPoint {
            distribution_point: CrlDistributionPoint {
                uris: vec![url.into()],
            },
            scope: Some(scope),
        }),
        revoked_certs: revoked
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: serial.clone(),
                revocation_time: this_update,
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .expect("CRL")
}

/// Replaces `path` by rename, as the agent does.
pub(super) fn replace(path: &Path, contents: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

/// An agent output directory holding `leaf`, the root and `crl`.
fn agent_dir(pki: &Pki, leaf: &Leaf, crl: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    replace(&dir.path().join(CERTIFICATE_FILE), &leaf.chain_pem);
    replace(&dir.path().join(KEY_FILE), &leaf.key_pem);
    replace(&dir.path().join(CA_FILE), &pki.root.pem());
    if let Some(crl) = crl {
        replace(&dir.path().join(CRL_FILE), crl);
    }
    dir
}

fn server_side(dir: &Path, options: MtlsOptions) -> Arc<Watched<dyn ClientCertVerifier>> {
    try_server_side(dir, options).expect("loads")
}

fn try_server_side(
    dir: &Path,
    options: MtlsOptions,
) -> Result<Arc<Watched<dyn ClientCertVerifier>>, MtlsError> {
    Watched::load(
        MtlsFiles::from_agent_dir(dir),
        options,
        provider(),
        client_verifier,
        SessionGeneration::default(),
    )
}

fn check_client(
    watched: &Watched<dyn ClientCertVerifier>,
    pki: &Pki,
    leaf: &Leaf,
) -> Result<(), rustls::Error> {
    watched
        .verifier()
        .verify_client_cert(&leaf.der, &[pki.issuing.der().clone()], UnixTime::now())
        .map(|_| ())
}

fn revoked() -> Result<(), rustls::Error> {
    Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
}

#[test]
fn ok_agent_dir_uses_the_agents_names() {
    let files = MtlsFiles::from_agent_dir("/out");
    assert_eq!(files.certificate(), Path::new("/out/cert.pem"));
    assert_eq!(files.key(), Path::new("/out/key.pem"));
    assert_eq!(files.ca(), Path::new("/out/ca.pem"));
    assert_eq!(files.crl(), Some(Path::new("/out/crl.pem")));
}

#[test]
fn fail_missing_certificate_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let error = server_config(
        &MtlsFiles::from_agent_dir(dir.path()),
        MtlsOptions::default(),
    )
    .expect_err("no files");
    assert!(
        matches!(&error, MtlsError::Read { path, .. } if *path == dir.path().join("cert.pem")),
        "{error:?}"
    );
}

#[test]
fn fail_key_of_another_certificate_at_build() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    let bob = pki.leaf("bob.test");
    let dir = agent_dir(&pki, &alice, None);
    replace(&dir.path().join(KEY_FILE), &bob.key_pem);
    let error = client_config(
        &MtlsFiles::from_agent_dir(dir.path()),
        MtlsOptions::default(),
    )
    .expect_err("mismatch");
    assert!(matches!(error, MtlsError::KeyMismatch { .. }), "{error:?}");
}

#[test]
fn fail_garbage_crl_at_build_names_the_file() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    let dir = agent_dir(&pki, &alice, Some("garbage"));
    let error = try_server_side(dir.path(), MtlsOptions::default()).expect_err("garbage");
    assert!(
        matches!(&error, MtlsError::Invalid { path, reason: InvalidFile::NoCrl }
            if *path == dir.path().join("crl.pem")),
        "{error:?}"
    );
}

#[test]
fn fail_required_crl_absent_or_blank() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    let options = MtlsOptions {
        crl_requirement: CrlRequirement::Required,
        ..MtlsOptions::default()
    };
    let dir = agent_dir(&pki, &alice, None);
    let error = try_server_side(dir.path(), options.clone()).expect_err("absent");
    assert!(matches!(error, MtlsError::CrlRequired { .. }), "{error:?}");
    replace(&dir.path().join(CRL_FILE), "\n");
    let error = try_server_side(dir.path(), options.clone()).expect_err("blank");
    assert!(matches!(error, MtlsError::CrlRequired { .. }), "{error:?}");
    replace(&dir.path().join(CRL_FILE), &pki.crl_pem(&[]));
    try_server_side(dir.path(), options).expect("present");
}

#[test]
fn ok_without_crl_file_no_revocation_check() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    let dir = agent_dir(&pki, &alice, None);
    let watched = server_side(dir.path(), MtlsOptions::default());
    assert_eq!(check_client(&watched, &pki, &alice), Ok(()));
}

#[test]
fn fail_revoked_client_and_server() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    let bob = pki.leaf("bob.test");
    let dir = agent_dir(&pki, &alice, Some(&pki.crl_pem(&[&bob])));
    let server = server_side(dir.path(), MtlsOptions::default());
    assert_eq!(check_client(&server, &pki, &alice), Ok(()));
    assert_eq!(check_client(&server, &pki, &bob), revoked());

    let client = Watched::load(
        MtlsFiles::from_agent_dir(dir.path()),
        MtlsOptions::default(),
        provider(),
        server_verifier,
        SessionGeneration::default(),
    )
    .expect("loads");
    let verify = |leaf: &Leaf, name: &'static str| {
        client
            .verifier()
            .verify_server_cert(
                &leaf.der,
                &[pki.issuing.der().clone()],
                &ServerName::try_from(name).expect("name"),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    };
    assert_eq!(verify(&alice, "alice.test"), Ok(()));
    assert_eq!(verify(&bob, "bob.test"), revoked());
}

#[test]
fn ok_revoked_issuing_ca_refused_by_chain_depth_only() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    let crl_pem = format!(
        "{}{}",
        pki.root_crl(true).pem().expect("pem"),
        pki.issuing_crl(&[], fresh()).pem().expect("pem")
    );
    let dir = agent_dir(&pki, &alice, Some(&crl_pem));
    let options = MtlsOptions {
        revocation_depth: RevocationDepth::Chain,
        ..MtlsOptions::default()
    };
    let chain = server_side(dir.path(), options);
    assert_eq!(check_client(&chain, &pki, &alice), revoked());
    let end_entity = server_side(dir.path(), MtlsOptions::default());
    assert_eq!(check_client(&end_entity, &pki, &alice), Ok(()));
}

#[test]
fn ok_unknown_status_refused_unless_allowed() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    // Only the root's CRL: nothing covers the leaves.
    let dir = agent_dir(&pki, &alice, Some(&pki.root_crl(false).pem().expect("pem")));
    let refuse = server_side(dir.path(), MtlsOptions::default());
    assert_eq!(
        check_client(&refuse, &pki, &alice),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownRevocationStatus
        ))
    );
    let options = MtlsOptions {
        unknown_status: UnknownStatus::Allow,
        ..MtlsOptions::default()
    };
    let allow = server_side(dir.path(), options);
    assert_eq!(check_client(&allow, &pki, &alice), Ok(()));
}

#[test]
fn ok_expired_crl_refused_unless_ignored() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    let now = time::OffsetDateTime::now_utc();
    let stale = (now - time::Duration::days(2), now - time::Duration::days(1));
    let crl_pem = format!(
        "{}{}",
        pki.root_crl(false).pem().expect("pem"),
        pki.issuing_crl(&[], stale).pem().expect("pem")
    );
    let dir = agent_dir(&pki, &alice, Some(&crl_pem));
    let enforce = server_side(dir.path(), MtlsOptions::default());
    assert!(
        matches!(
            check_client(&enforce, &pki, &alice),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ExpiredRevocationListContext { .. }
                    | CertificateError::ExpiredRevocationList
            ))
        ),
        "{:?}",
        check_client(&enforce, &pki, &alice)
    );
    let options = MtlsOptions {
        crl_expiry: CrlExpiry::Ignore,
        ..MtlsOptions::default()
    };
    let ignore = server_side(dir.path(), options);
    assert_eq!(check_client(&ignore, &pki, &alice), Ok(()));
}

#[test]
fn ok_new_crl_in_force_and_bad_changes_keep_it() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    let bob = pki.leaf("bob.test");
    let dir = agent_dir(&pki, &alice, Some(&pki.crl_pem(&[])));
    let crl_path = dir.path().join(CRL_FILE);
    let watched = server_side(dir.path(), MtlsOptions::default());
    assert_eq!(check_client(&watched, &pki, &bob), Ok(()));

    replace(&crl_path, &pki.crl_pem(&[&bob]));
    watched.reload();
    assert_eq!(check_client(&watched, &pki, &bob), revoked());
    assert_eq!(check_client(&watched, &pki, &alice), Ok(()));

    // Garbage, a block cut short, a blank file, no file: the revocation
    // stays in force through every one of them.
    let whole = pki.crl_pem(&[&bob]);
    let inside_begin = whole.rfind("-----BEGIN").expect("two blocks") + 5;
    for bad in [
        "garbage\n",
        &whole[..whole.len() / 2],
        &whole[..inside_begin],
        "",
        "\n",
    ] {
        replace(&crl_path, bad);
        watched.reload();
        assert_eq!(check_client(&watched, &pki, &bob), revoked(), "{bad:?}");
    }
    std::fs::remove_file(&crl_path).expect("remove");
    watched.reload();
    assert_eq!(check_client(&watched, &pki, &bob), revoked());
}

#[test]
fn ok_first_crl_appearing_later_takes_effect() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    let bob = pki.leaf("bob.test");
    let dir = agent_dir(&pki, &alice, None);
    let watched = server_side(dir.path(), MtlsOptions::default());
    assert_eq!(check_client(&watched, &pki, &bob), Ok(()));
    replace(&dir.path().join(CRL_FILE), &pki.crl_pem(&[&bob]));
    watched.reload();
    assert_eq!(check_client(&watched, &pki, &bob), revoked());
}

#[test]
fn ok_new_roots_replace_old_and_garbage_keeps_them() {
    let old = Pki::new();
    let new = Pki::named("certmint next root");
    let alice = old.leaf("alice.test");
    let carol = new.leaf("carol.test");
    let dir = agent_dir(&old, &alice, None);
    let watched = server_side(dir.path(), MtlsOptions::default());
    assert_eq!(check_client(&watched, &old, &alice), Ok(()));
    assert!(check_client(&watched, &new, &carol).is_err());

    replace(&dir.path().join(CA_FILE), "not a certificate");
    watched.reload();
    assert_eq!(check_client(&watched, &old, &alice), Ok(()));

    replace(&dir.path().join(CA_FILE), &new.root.pem());
    watched.reload();
    assert_eq!(check_client(&watched, &new, &carol), Ok(()));
    assert!(check_client(&watched, &old, &alice).is_err());
}

#[test]
fn ok_rotated_identity_installed_only_when_key_matches() {
    let pki = Pki::new();
    let first = pki.leaf("alice.test");
    let second = pki.leaf("alice.test");
    let dir = agent_dir(&pki, &first, None);
    let watched = server_side(dir.path(), MtlsOptions::default());
    let served = || watched.identity().cert[0].clone();
    assert_eq!(served(), first.der);

    // The agent's first rename: the new key, the old certificate.
    replace(&dir.path().join(KEY_FILE), &second.key_pem);
    watched.reload();
    assert_eq!(served(), first.der);
    // Its second rename.
    replace(&dir.path().join(CERTIFICATE_FILE), &second.chain_pem);
    watched.reload();
    assert_eq!(served(), second.der);

    // A certificate that does not parse is ignored.
    replace(&dir.path().join(CERTIFICATE_FILE), "garbage");
    watched.reload();
    assert_eq!(served(), second.der);
}

#[test]
fn ok_mismatch_is_read_again_at_the_next_check_without_a_new_stamp() {
    let pki = Pki::new();
    let first = pki.leaf("alice.test");
    let second = pki.leaf("alice.test");
    // Text around PEM blocks is ignored: pad both chains to one length so
    // that an in-place rewrite keeps the stamp.
    let width = first.chain_pem.len().max(second.chain_pem.len()) + 1;
    let pad = |pem: &str| format!("{pem}{}", "\n".repeat(width - pem.len()));
    let dir = agent_dir(&pki, &first, None);
    let certificate = dir.path().join(CERTIFICATE_FILE);
    replace(&certificate, &pad(&first.chain_pem));
    let watched = server_side(dir.path(), MtlsOptions::default());

    replace(&dir.path().join(KEY_FILE), &second.key_pem);
    let before = std::fs::metadata(&certificate).expect("stat");
    watched.reload();
    assert_eq!(
        watched.identity().cert[0],
        first.der,
        "mismatch not installed"
    );

    // The certificate changes under the same stamp: only the second look
    // that a mismatch earns can find it.
    let file = std::fs::File::options()
        .write(true)
        .open(&certificate)
        .expect("open");
    std::io::Write::write_all(&mut &file, pad(&second.chain_pem).as_bytes()).expect("rewrite");
    file.set_modified(before.modified().expect("mtime"))
        .expect("keep the mtime");
    drop(file);
    assert_eq!(
        std::fs::metadata(&certificate).expect("stat").len(),
        before.len()
    );
    watched.reload();
    assert_eq!(watched.identity().cert[0], second.der);
}

#[test]
fn ok_poll_reloads_in_the_background_and_respects_the_interval() {
    let pki = Pki::new();
    let first = pki.leaf("alice.test");
    let second = pki.leaf("alice.test");
    let dir = agent_dir(&pki, &first, None);

    let slow = MtlsOptions {
        reload_interval: Duration::from_secs(3600),
        ..MtlsOptions::default()
    };
    let idle = server_side(dir.path(), slow);
    let fast = MtlsOptions {
        reload_interval: Duration::ZERO,
        ..MtlsOptions::default()
    };
    let watched = server_side(dir.path(), fast);

    replace(&dir.path().join(KEY_FILE), &second.key_pem);
    replace(&dir.path().join(CERTIFICATE_FILE), &second.chain_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while watched.identity().cert[0] != second.der {
        assert!(
            Instant::now() < deadline,
            "the poll never installed the change"
        );
        watched.poll();
        std::thread::sleep(Duration::from_millis(10));
    }
    idle.poll();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!idle.is_reloading());
    assert_eq!(
        idle.identity().cert[0],
        first.der,
        "checked within the interval"
    );
}

#[test]
fn ok_sessions_forgotten_when_the_state_changes() {
    let generation = SessionGeneration::default();
    let store = generation.server_store(Arc::new(|| {}));
    assert!(store.put(b"id".to_vec(), b"session".to_vec()));
    assert_eq!(store.get(b"id"), Some(b"session".to_vec()));
    generation.advance();
    assert_eq!(store.get(b"id"), None);
}

#[test]
fn ok_reload_advances_the_session_generation() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    let bob = pki.leaf("bob.test");
    let dir = agent_dir(&pki, &alice, Some(&pki.crl_pem(&[])));
    let generation = SessionGeneration::default();
    let store = generation.server_store(Arc::new(|| {}));
    let watched = Watched::load(
        MtlsFiles::from_agent_dir(dir.path()),
        MtlsOptions::default(),
        provider(),
        client_verifier,
        generation,
    )
    .expect("loads");
    assert!(store.put(b"id".to_vec(), b"session".to_vec()));
    // An ignored change keeps the sessions.
    replace(&dir.path().join(CRL_FILE), "garbage");
    watched.reload();
    assert_eq!(store.get(b"id"), Some(b"session".to_vec()));
    replace(&dir.path().join(CRL_FILE), &pki.crl_pem(&[&bob]));
    watched.reload();
    assert_eq!(store.get(b"id"), None);
}

#[test]
fn ok_resumption_off_unless_enabled() {
    let pki = Pki::new();
    let alice = pki.leaf("alice.test");
    let dir = agent_dir(&pki, &alice, None);
    let files = MtlsFiles::from_agent_dir(dir.path());
    let server = server_config(&files, MtlsOptions::default()).expect("server");
    assert!(!server.session_storage.can_cache());
    assert_eq!(server.send_tls13_tickets, 0);
    let enabled = MtlsOptions {
        session_resumption: SessionResumption::Enabled,
        ..MtlsOptions::default()
    };
    let server = server_config(&files, enabled).expect("server");
    assert!(server.session_storage.can_cache());
    assert!(server.send_tls13_tickets > 0);
}
