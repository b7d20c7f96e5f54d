//! Our own side, before any packet is sent: read the key, certificate
//! chain, CA and CRL files, and check that our identity could work at all
//! (key matches certificate, chain reaches our own CA file, dates, the
//! usage the role needs, not revoked in our own CRLs).
//!
//! Invariants: the key's bytes never reach a message (only whether it
//! parses and matches); reading happens in [`load`], every judgement in
//! [`identity_checks`], which does no I/O and takes the time as input.

use std::path::{Path, PathBuf};

use rustls::pki_types::PrivateKeyDer;
use time::OffsetDateTime;

use super::analysis::{self, Cert, ChainFinding, Crl, DatesFinding, Purpose, RevocationFinding};
use super::report::{Cause, Check, Layer};

/// Where our files are.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The private key (PEM).
    pub key: PathBuf,
    /// Leaf, then intermediates (PEM).
    pub cert: PathBuf,
    /// The trust anchors (PEM).
    pub ca: PathBuf,
    /// The CRLs (PEM), if any.
    pub crl: Option<PathBuf>,
    /// Whether a missing CRL file is an error (named on the command line)
    /// or just means "no revocation check" (the agent wrote none yet).
    pub crl_required: bool,
}

impl Paths {
    /// The files of the agent's output directory: the generation `..data`
    /// points at, resolved once so that all files belong to the same one.
    pub fn in_dir(dir: &Path, crl: Option<PathBuf>) -> Paths {
        let base = std::fs::canonicalize(dir.join("..data")).unwrap_or_else(|_| dir.to_owned());
        let crl_required = crl.is_some();
        let crl = crl.or_else(|| {
            // crl.pem sits beside the other files; older agents do not write it.
            [base.join("crl.pem"), dir.join("crl.pem")]
                .into_iter()
                .find(|path| path.exists())
        });
        Paths {
            key: base.join("key.pem"),
            cert: base.join("cert.pem"),
            ca: base.join("ca.pem"),
            crl,
            crl_required,
        }
    }
}

/// Our parsed material; whatever could not be read is absent.
#[derive(Debug, Default)]
pub struct Material {
    /// Our private key.
    pub key: Option<PrivateKeyDer<'static>>,
    /// Our leaf, then intermediates.
    pub chain: Vec<Cert>,
    /// Our trust anchors.
    pub roots: Vec<Cert>,
    /// The CRLs.
    pub crls: Vec<Crl>,
}

/// Reads and parses the files; one `identity` check says what was read or
/// which file is unusable.
pub fn load(paths: &Paths) -> (Material, Check) {
    let mut material = Material::default();
    let mut problems = Vec::new();
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))
    };
    match read(&paths.key).and_then(|text| {
        rustls_pemfile::private_key(&mut text.as_bytes())
            .map_err(|error| {
                format!(
                    "{}: unreadable PEM private key: {error}",
                    paths.key.display()
                )
            })?
            .ok_or_else(|| format!("{}: no PEM private key", paths.key.display()))
    }) {
        Ok(key) => material.key = Some(key),
        Err(problem) => problems.push(problem),
    }
    match read(&paths.cert).and_then(|text| certificates(&paths.cert, &text)) {
        Ok(chain) => material.chain = chain,
        Err(problem) => problems.push(problem),
    }
    match read(&paths.ca).and_then(|text| certificates(&paths.ca, &text)) {
        Ok(roots) => material.roots = roots,
        Err(problem) => problems.push(problem),
    }
    if let Some(path) = &paths.crl {
        match (read(path), path.exists() || paths.crl_required) {
            (Ok(text), _) => match crls(path, &text) {
                Ok(crls) => material.crls = crls,
                Err(problem) => problems.push(problem),
            },
            (Err(problem), true) => problems.push(problem),
            (Err(_), false) => {}
        }
    }
    let check = if problems.is_empty() {
        Check::ok(
            Layer::Identity,
            format!(
                "read {} (private key), {} (leaf + {} more), {} ({} CA certificate(s)){}",
                paths.key.display(),
                paths.cert.display(),
                material.chain.len().saturating_sub(1),
                paths.ca.display(),
                material.roots.len(),
                match &paths.crl {
                    Some(path) => format!(", {} ({} CRL(s))", path.display(), material.crls.len()),
                    None => ", no CRL file".to_owned(),
                }
            ),
        )
    } else {
        Check::fail(Layer::Identity, Cause::FilesUnreadable, problems.join("; "))
    };
    (material, check)
}

fn certificates(path: &Path, text: &str) -> Result<Vec<Cert>, String> {
    let ders = certmint::client::trust::certificates_from_pem(text)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if ders.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    ders.into_iter()
        .enumerate()
        .map(|(index, der)| {
            Cert::from_der(der)
                .map_err(|error| format!("{}: certificate #{}: {error}", path.display(), index + 1))
        })
        .collect()
}

fn crls(path: &Path, text: &str) -> Result<Vec<Crl>, String> {
    let mut found = Vec::new();
    for (index, item) in rustls_pemfile::crls(&mut text.as_bytes()).enumerate() {
        let der =
            item.map_err(|error| format!("{}: unreadable PEM CRL: {error}", path.display()))?;
        found.push(
            Crl::from_der(&der)
                .map_err(|error| format!("{}: CRL #{}: {error}", path.display(), index + 1))?,
        );
    }
    if found.is_empty() && !text.trim().is_empty() {
        return Err(format!("{}: no PEM X509 CRL block", path.display()));
    }
    Ok(found)
}

/// Checks our identity for `purpose` at `now`: key, own chain, dates,
/// usage (all layer `identity`), then our own revocation (layer
/// `revocation`). Nothing when the files could not be read.
pub fn identity_checks(material: &Material, now: OffsetDateTime, purpose: Purpose) -> Vec<Check> {
    let mut checks = Vec::new();
    let Some(leaf) = material.chain.first() else {
        return checks;
    };
    if let Some(key) = &material.key {
        checks.push(key_check(leaf, key));
    }
    let at = analysis::chain_time(&material.chain, now);
    let chain = analysis::chain(&material.chain, &material.roots, at);
    let verified = matches!(chain, ChainFinding::Verified { .. });
    checks.push(match chain {
        ChainFinding::Verified {
            intermediates,
            root,
        } => Check::ok(
            Layer::Identity,
            format!("our chain: leaf <- {intermediates} intermediate(s) <- {root}, in our CA file"),
        ),
        ChainFinding::MissingIntermediate { issuer, .. } => Check::fail(
            Layer::Identity,
            Cause::ChainIncomplete,
            format!(
                "our certificate file lacks the intermediate {issuer}: peers cannot build a path \
                 from our leaf to the root"
            ),
        ),
        ChainFinding::UnknownCa {
            issuer, trusted, ..
        } => Check::fail(
            Layer::Identity,
            Cause::ChainIncomplete,
            format!(
                "our chain leads to {issuer}, which our own CA file ({}) does not contain: \
                 a certificate and a CA file from different CAs?",
                trusted.join("; ")
            ),
        ),
        ChainFinding::WrongCaKey { issuer } => Check::fail(
            Layer::Identity,
            Cause::ChainIncomplete,
            format!("our chain does not verify: our CA file has a {issuer} with another key"),
        ),
        ChainFinding::Empty => {
            Check::fail(Layer::Identity, Cause::ChainIncomplete, "no certificate")
        }
        ChainFinding::Invalid(why) => Check::fail(
            Layer::Identity,
            Cause::ChainIncomplete,
            format!("our chain does not verify: {why}"),
        ),
    });
    if let Some(dates) = analysis::dates(&material.chain, now.unix_timestamp()) {
        checks.push(dates_check(Layer::Identity, "our", &dates));
    }
    let (wanted, cause) = match purpose {
        Purpose::Client => ("clientAuth", Cause::NoClientAuth),
        Purpose::Server => ("serverAuth", Cause::NoServerAuth),
    };
    let usages = analysis::eku_text(leaf);
    checks.push(
        if analysis::eku_allows(&material.chain, &material.roots, at, verified, purpose) {
            Check::ok(Layer::Identity, format!("our usages: {usages}"))
        } else {
            Check::fail(
                Layer::Identity,
                cause,
                format!(
                    "our certificate lacks {wanted} ({usages}): servers refuse it as a {} \
                     certificate; enroll with a policy whose extended_key_usage has {}",
                    match purpose {
                        Purpose::Client => "client",
                        Purpose::Server => "server",
                    },
                    match purpose {
                        Purpose::Client => "client_auth",
                        Purpose::Server => "server_auth",
                    }
                ),
            )
        },
    );
    let revoked_cause = match purpose {
        Purpose::Client => Cause::ClientCertificateRevoked,
        Purpose::Server => Cause::ServerCertificateRevoked,
    };
    checks.push(revocation_check(
        "our",
        revoked_cause,
        &analysis::revocation(&material.chain, &material.roots, &material.crls, now),
    ));
    checks
}

fn key_check(leaf: &Cert, key: &PrivateKeyDer<'static>) -> Check {
    use rustls::{Error, InconsistentKeys};
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(vec![leaf.der.clone()], key.clone_key(), &provider) {
        Ok(_) => Check::ok(Layer::Identity, "our private key matches our certificate"),
        Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Check::fail(
            Layer::Identity,
            Cause::KeyMismatch,
            "our private key does not match our certificate (key and certificate from \
             different enrollments?)",
        ),
        Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => Check::ok(
            Layer::Identity,
            "cannot tell whether our private key matches our certificate",
        ),
        Err(error) => Check::fail(
            Layer::Identity,
            Cause::KeyMismatch,
            format!("our private key is not usable for TLS: {error}"),
        ),
    }
}

/// The check for a dates finding about `whose` certificate.
pub fn dates_check(layer: Layer, whose: &str, dates: &DatesFinding) -> Check {
    match dates {
        DatesFinding::Valid {
            not_before,
            not_after,
            left,
        } => Check::ok(
            layer,
            format!(
                "{whose} certificate is valid {} to {} ({} left)",
                analysis::rfc3339(*not_before),
                analysis::rfc3339(*not_after),
                analysis::human(*left)
            ),
        ),
        DatesFinding::Expired {
            subject,
            leaf,
            ago,
            not_after,
        } => Check::fail(
            layer,
            Cause::Expired,
            format!(
                "{} expired {} ago (notAfter {}); if it should not have, is this host's clock ahead?",
                describe(whose, *leaf, subject),
                analysis::human(*ago),
                analysis::rfc3339(*not_after)
            ),
        ),
        DatesFinding::NotYetValid {
            subject,
            leaf,
            ahead,
            not_before,
        } => Check::fail(
            layer,
            Cause::NotYetValid,
            format!(
                "{} is not valid for another {} (notBefore {}): is this host's clock behind, \
                 or the issuer's ahead?",
                describe(whose, *leaf, subject),
                analysis::human(*ahead),
                analysis::rfc3339(*not_before)
            ),
        ),
    }
}

fn describe(whose: &str, leaf: bool, subject: &str) -> String {
    if leaf {
        format!("{whose} certificate ({subject})")
    } else {
        format!("the CA certificate {subject} in {whose} chain")
    }
}

/// The check for a revocation finding about `whose` certificate.
pub fn revocation_check(whose: &str, revoked: Cause, finding: &RevocationFinding) -> Check {
    match finding {
        RevocationFinding::NoCrls => Check::skip(
            Layer::Revocation,
            format!("{whose} certificate: no CRL given (--crl FILE, or crl.pem in --out)"),
        ),
        RevocationFinding::ChainUnverified => Check::skip(
            Layer::Revocation,
            format!("{whose} certificate: its chain does not verify, so no CRL can vouch for it"),
        ),
        RevocationFinding::NotRevoked { checked, doubts } if doubts.is_empty() => Check::ok(
            Layer::Revocation,
            format!(
                "{whose} certificate is not revoked (CRL of {})",
                checked.join("; ")
            ),
        ),
        RevocationFinding::NotRevoked { doubts, .. } => Check::warn(
            Layer::Revocation,
            Cause::CrlUnusable,
            format!("{whose} certificate: {}", doubts.join("; ")),
        ),
        RevocationFinding::Revoked {
            leaf,
            subject,
            serial,
            revoked_at,
            reason,
        } => Check::fail(
            Layer::Revocation,
            revoked,
            format!(
                "{} (serial {serial}) is revoked: listed in the CRL{}{}",
                describe(whose, *leaf, subject),
                revoked_at
                    .map(|at| format!(" since {}", analysis::rfc3339(at)))
                    .unwrap_or_default(),
                reason
                    .as_ref()
                    .map(|reason| format!(", reason {reason}"))
                    .unwrap_or_default()
            ),
        ),
        RevocationFinding::Unusable(why) => Check::warn(
            Layer::Revocation,
            Cause::CrlUnusable,
            format!("{whose} certificate: a CRL of its issuer is unusable: {why}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    use time::Duration;

    use super::super::analysis::testing::*;
    use super::super::report::Status;
    use super::*;

    fn material(chain: Vec<Cert>, key_pem: &str, roots: Vec<Cert>, crls: Vec<Crl>) -> Material {
        Material {
            key: rustls_pemfile::private_key(&mut key_pem.as_bytes()).unwrap(),
            chain,
            roots,
            crls,
        }
    }

    fn failures(checks: &[Check]) -> Vec<(Layer, Option<Cause>)> {
        checks
            .iter()
            .filter(|check| check.status == Status::Fail)
            .map(|check| (check.layer, check.cause))
            .collect()
    }

    #[test]
    fn ok_good_identity_has_no_failure() {
        let root = root("r");
        let intermediate = root.intermediate("i");
        let (leaf, key) = intermediate.leaf("a.test", &[ClientAuth], |_| {});
        let material = material(
            vec![leaf, intermediate.cert.clone()],
            &key,
            vec![root.cert.clone()],
            vec![],
        );
        let checks = identity_checks(&material, now(), Purpose::Client);
        assert_eq!(failures(&checks), vec![]);
        assert_eq!(checks.last().map(|check| check.status), Some(Status::Skip));
    }

    #[test]
    fn fail_each_local_defect_has_its_cause() {
        let root = root("r");
        let intermediate = root.intermediate("i");
        let (leaf, key) = intermediate.leaf("a.test", &[ServerAuth], |params| {
            params.not_before = now() - Duration::days(3);
            params.not_after = now() - Duration::days(1);
        });
        let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let crl = intermediate.crl(&[&[0x11, 0x22, 0x33]], now() + Duration::days(1));

        let expired = material(
            vec![leaf.clone(), intermediate.cert.clone()],
            &key,
            vec![root.cert.clone()],
            vec![crl],
        );
        assert_eq!(
            failures(&identity_checks(&expired, now(), Purpose::Client)),
            vec![
                (Layer::Identity, Some(Cause::Expired)),
                (Layer::Identity, Some(Cause::NoClientAuth)),
                (Layer::Revocation, Some(Cause::ClientCertificateRevoked)),
            ]
        );

        let mismatched = material(
            vec![leaf.clone()],
            &other_key,
            vec![root.cert.clone()],
            vec![],
        );
        let found = failures(&identity_checks(&mismatched, now(), Purpose::Server));
        assert_eq!(
            found,
            vec![
                (Layer::Identity, Some(Cause::KeyMismatch)),
                (Layer::Identity, Some(Cause::ChainIncomplete)),
                (Layer::Identity, Some(Cause::Expired)),
            ]
        );
    }

    #[test]
    fn ok_agent_directory_is_read_from_the_generation_data_points_at() {
        let dir = tempfile::tempdir().unwrap();
        let generation = dir.path().join("..gen-7");
        std::fs::create_dir(&generation).unwrap();
        std::fs::write(generation.join("crl.pem"), "").unwrap();
        std::os::unix::fs::symlink("..gen-7", dir.path().join("..data")).unwrap();
        let paths = Paths::in_dir(dir.path(), None);
        let generation = std::fs::canonicalize(&generation).unwrap();
        assert_eq!(paths.key, generation.join("key.pem"));
        assert_eq!(paths.cert, generation.join("cert.pem"));
        assert_eq!(paths.crl, Some(generation.join("crl.pem")));
        assert!(!paths.crl_required);
    }

    #[test]
    fn fail_unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), "not pem").unwrap();
        let paths = Paths::in_dir(dir.path(), None);
        let (material, check) = load(&paths);
        assert_eq!(check.cause, Some(Cause::FilesUnreadable));
        assert!(check.detail.contains("key.pem"), "{}", check.detail);
        assert!(
            check.detail.contains("cert.pem: no PEM certificate"),
            "{}",
            check.detail
        );
        assert!(material.key.is_none());
        // No crl.pem in the directory: not an error, just no revocation check.
        assert!(paths.crl.is_none());
        let required = Paths::in_dir(dir.path(), Some(dir.path().join("missing.pem")));
        assert!(load(&required).1.detail.contains("missing.pem"));
    }
}
