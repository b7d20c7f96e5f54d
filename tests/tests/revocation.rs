//! CRLs end to end, on SQLite and PostgreSQL: every leaf names its CRL, the
//! plain-HTTP listener serves it, a revocation made with
//! `certmint admin certificates revoke` is in the served CRL within
//! seconds, and OpenSSL, as a relying party, accepts the CRL under the CA
//! and refuses the revoked certificate while it still accepts others.

use std::path::Path;
use std::time::{Duration, Instant};

use certmint::wire::{CrlIndex, CrlScope};
use certmint_e2e::cli::{admin, enroll_files};
use certmint_e2e::{backend_tests, der_to_pem, pem_chain, TestServer};
use der::Decode as _;
use x509_cert::ext::pkix::crl::CrlDistributionPoints;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};

/// The bound the server promises between a revocation and a served CRL
/// that lists it.
const REVOCATION_VISIBLE_WITHIN: Duration = Duration::from_secs(5);

/// The one CRL distribution point URL of a PEM certificate.
fn distribution_point(certificate_pem: &str) -> String {
    let der = &pem_chain(certificate_pem)[0];
    let certificate = x509_cert::Certificate::from_der(der).expect("certificate parses");
    let (_, points) = certificate
        .tbs_certificate()
        .get_extension::<CrlDistributionPoints>()
        .expect("extensions decode")
        .expect("the leaf has a CRL Distribution Points extension");
    let [point] = points.0.as_slice() else {
        panic!("one distribution point expected: {points:?}");
    };
    let Some(DistributionPointName::FullName(names)) = &point.distribution_point else {
        panic!("a full name expected: {point:?}");
    };
    let [GeneralName::UniformResourceIdentifier(uri)] = names.as_slice() else {
        panic!("one URI expected: {names:?}");
    };
    uri.to_string()
}

/// The CRL at `url` (DER), once it lists `serial` (hex), within the bound.
fn crl_listing(server: &TestServer, url: &str, serial: &str, since: Instant) -> Vec<u8> {
    loop {
        let (status, _, body) = server.fetch(url, &[]);
        assert_eq!(status, 200, "GET {url}");
        if listed_serials(&body).iter().any(|listed| listed == serial) {
            return body;
        }
        assert!(
            since.elapsed() < REVOCATION_VISIBLE_WITHIN,
            "{url} did not list {serial} within {REVOCATION_VISIBLE_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lower-case hex serials a DER CRL lists.
fn listed_serials(crl_der: &[u8]) -> Vec<String> {
    let crl: x509_cert::crl::CertificateList =
        x509_cert::crl::CertificateList::from_der(crl_der).expect("the CRL parses");
    crl.tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .map(|entry| strip_leading_zeros(&hex::encode(entry.serial_number.as_bytes())))
        .collect()
}

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn strip_leading_zeros(serial: &str) -> String {
    serial.trim_start_matches('0').to_owned()
}

backend_tests! {
    fn ok_a_revocation_reaches_the_crl_and_openssl_refuses_the_certificate(server: &TestServer) {
        let revoked = enroll_files(server, "revoked.crl.internal", &["client_auth"]);
        let kept = enroll_files(server, "kept.crl.internal", &["client_auth"]);
        let url = distribution_point(&revoked.cert_pem);
        assert!(
            url.starts_with(&format!("{}/crl/", server.crl_url())),
            "the distribution point {url} is on the CRL listener {}",
            server.crl_url()
        );

        let started = Instant::now();
        admin(
            server,
            &["certificates", "revoke", &revoked.serial, "--reason", "key_compromise"],
        )
        .assert_exit(0);
        let crl = crl_listing(server, &url, &strip_leading_zeros(&revoked.serial), started);
        eprintln!("revocation visible in the CRL after {:?}", started.elapsed());

        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(path("crl.pem"), der_to_pem("X509 CRL", &crl)).expect("write crl.pem");
        let chain = pem_chain(&revoked.cert_pem);
        std::fs::write(path("issuing.pem"), der_to_pem("CERTIFICATE", &chain[1]))
            .expect("write issuing.pem");
        std::fs::write(path("root.pem"), server.root_pem()).expect("write root.pem");
        std::fs::write(path("revoked.pem"), der_to_pem("CERTIFICATE", &chain[0]))
            .expect("write revoked.pem");
        std::fs::write(path("kept.pem"), der_to_pem("CERTIFICATE", &pem_chain(&kept.cert_pem)[0]))
            .expect("write kept.pem");

        let (ok, text) = openssl(
            dir.path(),
            &["crl", "-in", "crl.pem", "-noout", "-verify", "-CAfile", "issuing.pem", "-text"],
        );
        assert!(ok && text.contains("verify OK"), "openssl crl -verify: {text}");
        assert!(text.contains("Key Compromise"), "the entry carries its reason: {text}");
        assert!(
            text.contains("Issuing Distribution Point: critical")
                && text.contains("Only User Certificates")
                && text.contains(&url),
            "a critical IDP with the URL and onlyContainsUserCerts: {text}"
        );

        let verify = |leaf: &str| {
            openssl(
                dir.path(),
                &[
                    "verify", "-crl_check", "-CAfile", "root.pem", "-untrusted", "issuing.pem",
                    "-CRLfile", "crl.pem", leaf,
                ],
            )
        };
        let (ok, text) = verify("revoked.pem");
        assert!(!ok && text.contains("certificate revoked"), "openssl verify -crl_check: {text}");
        let (ok, text) = verify("kept.pem");
        assert!(ok, "an unrevoked certificate verifies: {text}");

        // The whole chain, as nginx checks it (CRL_CHECK_ALL): the leaf's
        // shard and the root's CRL of CA certificates.
        let (_, _, index) = server.fetch(&format!("{}/v1/crls", server.crl_url()), &[]);
        let index: CrlIndex = serde_json::from_slice(&index).expect("a CRL index");
        let root_crl = index
            .crls
            .iter()
            .find(|crl| crl.scope == CrlScope::CaCerts)
            .expect("the root's CRL is listed");
        let (status, _, root_crl) = server.fetch(&root_crl.url, &[]);
        assert_eq!(status, 200);
        let (_, _, kept_crl) = server.fetch(&distribution_point(&kept.cert_pem), &[]);
        std::fs::write(
            path("all.pem"),
            format!("{}{}", der_to_pem("X509 CRL", &kept_crl), der_to_pem("X509 CRL", &root_crl)),
        )
        .expect("write all.pem");
        let (ok, text) = openssl(
            dir.path(),
            &[
                "verify", "-crl_check_all", "-CAfile", "root.pem", "-untrusted", "issuing.pem",
                "-CRLfile", "all.pem", "kept.pem",
            ],
        );
        assert!(ok, "openssl verify -crl_check_all finds a CRL for every link: {text}");
    }

    fn ok_the_index_lists_every_shard_and_crls_revalidate_with_their_etag(server: &TestServer) {
        let (status, _, body) = server.fetch(&format!("{}/v1/crls", server.crl_url()), &[]);
        assert_eq!(status, 200);
        let index: CrlIndex = serde_json::from_slice(&body).expect("a CRL index");
        let leaf_shards = index
            .crls
            .iter()
            .filter(|crl| crl.scope == CrlScope::UserCerts)
            .count();
        assert_eq!(leaf_shards, 16, "one CRL per shard by default: {index:?}");
        let ca_crls: Vec<_> = index
            .crls
            .iter()
            .filter(|crl| crl.scope == CrlScope::CaCerts)
            .collect();
        assert_eq!(ca_crls.len(), 1, "the root signs one CRL of CA certificates: {index:?}");

        let first = &index.crls[0];
        let url = format!("{}{}", server.crl_url(), first.path);
        assert_eq!(url, first.url, "the index names the distribution point");
        let (status, headers, body) = server.fetch(&url, &[]);
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/pkix-crl");
        let etag = headers["etag"].to_str().expect("an ASCII ETag").to_owned();
        assert_eq!(etag, format!("\"{}\"", first.sha256));
        assert_eq!(
            first.sha256,
            format!("sha256:{}", hex::encode(ring::digest::digest(&ring::digest::SHA256, &body)))
        );
        let (status, _, body) = server.fetch(&url, &[("if-none-match", &etag)]);
        assert_eq!(status, 304, "an unchanged CRL is not sent again");
        assert!(body.is_empty());

        // The same CRL is on the HTTPS API; the listener serves nothing else.
        let (status, _, _) = server.fetch(&format!("{}{}", server.base_url(), first.path), &[]);
        assert_eq!(status, 200);
        let (status, _, body) = server.fetch(&format!("{}/v1/directory", server.crl_url()), &[]);
        assert_eq!(status, 404, "the CRL listener serves only CRLs and the chain");
        assert!(String::from_utf8_lossy(&body).contains("request.not_found"));
        let (status, _, body) =
            server.fetch(&format!("{}/crl/{}/999.crl", server.crl_url(), first.issuer_key_id), &[]);
        assert_eq!(status, 404);
        assert!(String::from_utf8_lossy(&body).contains("crl.not_found"));
        let (_, _, metrics) = server.fetch(&format!("{}/metrics", server.base_url()), &[]);
        let metrics = String::from_utf8_lossy(&metrics);
        let signed: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix("certmint_crl_signed_total "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no certmint_crl_signed_total in {metrics}"));
        assert!(signed >= 17.0, "every shard and the root's CRL were signed: {signed}");
        assert!(metrics.contains("certmint_crl_oldest_this_update_timestamp_seconds "));
        let (status, _, chain) = server.fetch(&format!("{}/v1/ca/chain.pem", server.crl_url()), &[]);
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&chain).contains(server.root_pem().trim()));
    }

    fn ok_a_burst_of_revocations_costs_one_signature_per_shard(server: &TestServer) {
        let enrolled: Vec<_> = (0..6)
            .map(|n| enroll_files(server, &format!("burst{n}.crl.internal"), &["client_auth"]))
            .collect();
        let url = distribution_point(&enrolled[0].cert_pem);
        let before = server.fetch(&format!("{}/v1/crls", server.crl_url()), &[]).2;
        let before: CrlIndex = serde_json::from_slice(&before).expect("index");
        let log_offset = server.log_len();
        let started = Instant::now();
        for files in &enrolled {
            admin(server, &["certificates", "revoke", &files.serial]).assert_exit(0);
        }
        let last = strip_leading_zeros(&enrolled.last().expect("six").serial);
        let crl = crl_listing(server, &url, &last, started);
        let listed = listed_serials(&crl);
        for files in enrolled.iter().filter(|files| distribution_point(&files.cert_pem) == url) {
            assert!(listed.contains(&strip_leading_zeros(&files.serial)), "{listed:?}");
        }
        let after = server.fetch(&format!("{}/v1/crls", server.crl_url()), &[]).2;
        let after: CrlIndex = serde_json::from_slice(&after).expect("index");
        for (old, new) in before.crls.iter().zip(&after.crls) {
            assert!(new.number >= old.number, "CRL numbers never go back: {old:?} {new:?}");
        }
        let signed = server.log_since(log_offset).matches("CRL signed").count();
        assert!(
            signed < enrolled.len(),
            "six revocations in one shard were coalesced, not signed one by one ({signed} signatures)"
        );
    }
}
