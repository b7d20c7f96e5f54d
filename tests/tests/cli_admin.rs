//! `certmint admin` against the real server, on SQLite and PostgreSQL:
//! the policy → token → enrollment → inventory → revocation → audit cycle
//! driven through the CLI, its tables and `--json`, its exit codes and
//! `error: <code>` lines, and the trust and role refusals; provisioners
//! registered, listed and disabled through the CLI, with enrollments by
//! their own tokens.
//!
//! Every run asserts that the admin token never appears in the output
//! (`certmint_e2e::cli::admin_as`).

use certmint::wire::{CertificateStatus, RevocationReason};
use certmint_e2e::cli::{admin, admin_as, admin_with, run_certmint};
use certmint_e2e::{
    backend_tests, identity, jwt_segments, make_csr, policy_json, CommandOutput, TestProvisioner,
};
use serde_json::Value;

/// Exit codes from `client/src/bin/certmint/exit.rs`.
const EXIT_FAILURE: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_POLICY_REFUSED: i32 = 6;
const EXIT_TRUST_FAILURE: i32 = 7;

/// The data row of a table whose first column is `key`.
fn row<'a>(output: &'a CommandOutput, key: &str) -> Option<&'a str> {
    output
        .stdout
        .lines()
        .skip(1)
        .find(|line| line.split_whitespace().next() == Some(key))
}

/// `item[field] == value` for some item of a `{"items": [...]}` page.
fn has_item(page: &Value, field: &str, value: &str) -> bool {
    page["items"]
        .as_array()
        .is_some_and(|items| items.iter().any(|item| item[field] == value))
}

fn write_temp(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write a temporary file");
    path.display().to_string()
}

backend_tests! {
    fn ok_policy_token_certificate_and_audit_cycle(server: &TestServer) {
        let dir = tempfile::tempdir().unwrap();
        let name = server.unique("cli");
        let dns = format!("api.{name}.test");
        let policy = policy_json(&name, &[&format!("*.{name}.test")], &[], &[]);
        let file = write_temp(&dir, "policy.json", &policy.to_string());

        // Create from a file; list as a table and as JSON; show.
        let created = admin(server, &["policies", "create", "--file", &file]);
        created.assert_exit(0);
        assert!(created.stdout.contains(&format!("policy {name} version 1")), "{}", created.stdout);

        let table = admin(server, &["policies", "list", "--all"]);
        table.assert_exit(0);
        let header = table.stdout.lines().next().unwrap();
        assert!(header.starts_with("NAME") && header.contains("VERSION"), "{header}");
        let line = row(&table, &name).unwrap_or_else(|| panic!("{name} not listed:\n{}", table.stdout));
        // Aligned: the VERSION column starts at the same offset in every row.
        let column = header.find("VERSION").unwrap();
        assert_eq!(&line[column..column + 1], "1", "{header}\n{line}");

        let json = admin(server, &["--json", "policies", "list", "--all", "--limit", "2"]);
        json.assert_exit(0);
        let page = json.json();
        assert!(has_item(&page, "name", &name), "{page}");
        assert!(page.get("next").is_none(), "--all reads to the last page: {page}");

        let shown = admin(server, &["policies", "show", &name]);
        shown.assert_exit(0);
        assert!(shown.stdout.lines().any(|l| l.starts_with("version:") && l.ends_with(" 1")), "{}", shown.stdout);
        let shown_json = admin(server, &["policies", "show", &name, "--json"]).json();
        assert_eq!(shown_json["version"], 1);
        assert_eq!(shown_json["allowed"]["dns"][0], format!("*.{name}.test"));

        // Mint through the CLI; the JWT is the only thing on stdout.
        let minted = admin(server, &["tokens", "mint", "--policy", &name, "--dns", &dns, "--ttl", "1h", "--max-uses", "1"]);
        minted.assert_exit(0);
        let jwt = minted.stdout.trim().to_owned();
        assert_eq!(jwt.split('.').count(), 3, "stdout is not one JWT: {}", minted.stdout);
        assert!(minted.stderr.contains("minted token"), "{}", minted.stderr);
        assert!(!minted.stderr.contains(&jwt), "the JWT leaked to stderr");

        // Enroll with it through the harness.
        let (csr, _key) = make_csr("ec-p256", &[&dns], &[], &[]);
        let enrolled = server.enroll(&csr, &jwt);
        enrolled.assert_status(201);
        let serial = enrolled.body["serial"].as_str().unwrap().to_owned();

        let tokens = admin(server, &["tokens", "list", "--all"]);
        tokens.assert_exit(0);
        assert!(tokens.stdout.lines().any(|l| l.contains(&name) && l.contains("used up") && l.contains("1/1")), "{}", tokens.stdout);

        // Inventory: table, filtered JSON, show, PEM.
        let listed = admin(server, &["certificates", "list", "--policy", &name]);
        listed.assert_exit(0);
        let line = row(&listed, &serial).unwrap_or_else(|| panic!("{serial} not listed:\n{}", listed.stdout));
        assert!(line.contains("issued") && line.contains(&dns), "{line}");
        let filtered = admin(server, &["--json", "certs", "list", "--policy", &name, "--status", "issued", "--expiring-within", "3d"]).json();
        assert!(has_item(&filtered, "serial", &serial), "{filtered}");
        let none = admin(server, &["--json", "certs", "list", "--policy", &name, "--status", "revoked"]).json();
        assert!(!has_item(&none, "serial", &serial), "{none}");

        let shown = admin(server, &["certificates", "show", &serial]);
        shown.assert_exit(0);
        assert!(shown.stdout.lines().any(|l| l.starts_with("status:") && l.ends_with("issued")), "{}", shown.stdout);
        let pem = admin(server, &["certificates", "show", &serial, "--pem"]);
        pem.assert_exit(0);
        assert_eq!(pem.stdout.trim(), enrolled.body["certificate_pem"].as_str().unwrap().trim());

        // Revoke with a reason.
        let revoked = admin(server, &["certificates", "revoke", &serial, "--reason", "key_compromise"]);
        revoked.assert_exit(0);
        assert!(revoked.stdout.contains("key_compromise"), "{}", revoked.stdout);
        let info = server.certificate(&serial);
        assert_eq!(info.status, CertificateStatus::Revoked);
        assert_eq!(info.revocation_reason, Some(RevocationReason::KeyCompromise));
        let again = admin(server, &["certificates", "revoke", &serial]);
        again.assert_exit(EXIT_FAILURE);
        assert_eq!(again.error_code(), Some("certificate.already_revoked"), "{}", again.stderr);

        // The audit log shows each step, and its hash chain verifies.
        let audit = admin(server, &["audit", "--all", "--verify"]);
        audit.assert_exit(0);
        assert!(audit.stderr.contains("audit chain verified"), "{}", audit.stderr);
        assert!(audit.stderr.contains("from the genesis hash"), "{}", audit.stderr);
        for (kind, subject) in [
            ("policy.created", name.as_str()),
            ("certificate.issued", serial.as_str()),
            ("certificate.revoked", serial.as_str()),
        ] {
            assert!(
                audit.stdout.lines().any(|l| l.contains(kind) && l.contains(subject)),
                "no {kind} event for {subject}:\n{}",
                audit.stdout
            );
        }
        // Newest first, so the latest step leads even without --all.
        let seqs: Vec<i64> = audit.stdout.lines().skip(1)
            .filter_map(|line| line.split_whitespace().next()?.parse().ok()).collect();
        assert!(seqs.len() > 1 && seqs.windows(2).all(|pair| pair[0] > pair[1]), "{}", audit.stdout);
        let recent = admin(server, &["audit", "--last", "1"]);
        recent.assert_exit(0);
        // Other tests share the server, so events may have been added since.
        let newest: Vec<i64> = recent.stdout.lines().skip(1)
            .filter_map(|line| line.split_whitespace().next()?.parse().ok()).collect();
        assert!(newest.len() == 1 && newest[0] >= seqs[0], "{}", recent.stdout);
        let events = admin(server, &["--json", "audit", "--all"]).json();
        let minted_event = events["items"].as_array().unwrap().iter().any(|event| event["kind"] == "token.minted");
        assert!(minted_event, "{events}");
    }

    fn ok_policy_from_stdin_replace_disable_and_evaluate(server: &TestServer) {
        let dir = tempfile::tempdir().unwrap();
        let name = server.unique("cli-eval");
        let mut policy = policy_json(&name, &[&format!("*.{name}.test")], &[], &[]);
        let created = admin_with(server, server.admin_token(), &["policies", "create", "--file", "-"], Some(&policy.to_string()));
        created.assert_exit(0);

        // Dry runs: allow exits 0; deny exits 6 and lists every refusal.
        let (good, _) = make_csr("ec-p256", &[&format!("a.{name}.test")], &[], &[]);
        let good = write_temp(&dir, "good.csr", &good);
        admin(server, &["policies", "evaluate", &name, "--csr", &good]).assert_exit(0);
        let (bad, _) = make_csr("ec-p256", &["elsewhere.test"], &[], &[]);
        let bad = write_temp(&dir, "bad.csr", &bad);
        let denied = admin(server, &["policies", "evaluate", &name, "--csr", &bad, "--ttl", "1h"]);
        denied.assert_exit(EXIT_POLICY_REFUSED);
        assert!(denied.stdout.starts_with("deny"), "{}", denied.stdout);
        assert!(denied.stdout.contains("policy.name_not_allowed"), "{}", denied.stdout);
        let narrower = admin(server, &["--json", "policies", "evaluate", &name, "--csr", &good, "--identity-dns", &format!("b.{name}.test")]);
        narrower.assert_exit(EXIT_POLICY_REFUSED);
        assert_eq!(narrower.json()["decision"], "deny");

        policy["description"] = "second version".into();
        let file = write_temp(&dir, "policy.json", &policy.to_string());
        let replaced = admin(server, &["policies", "replace", &name, "--file", &file]);
        replaced.assert_exit(0);
        assert!(replaced.stdout.contains("version 2"), "{}", replaced.stdout);

        admin(server, &["policies", "disable", &name]).assert_exit(0);
        let shown = admin(server, &["--json", "policies", "show", &name]).json();
        assert_eq!((shown["version"].as_i64(), shown["enabled"].as_bool()), (Some(3), Some(false)));
        let refused = admin(server, &["tokens", "mint", "--policy", &name, "--dns", &format!("a.{name}.test")]);
        refused.assert_exit(EXIT_POLICY_REFUSED);
        assert_eq!(refused.error_code(), Some("policy.disabled"), "{}", refused.stderr);
        assert!(refused.stdout.is_empty(), "{}", refused.stdout);
    }

    fn ok_token_out_file_is_owner_only_and_revocable(server: &TestServer) {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let name = server.unique("cli-tok");
        server.create_policy(&policy_json(&name, &[&format!("*.{name}.test")], &[], &[]));
        let out = dir.path().join("token.jwt");
        let out_text = out.display().to_string();
        let minted = admin(server, &["--json", "tokens", "mint", "--policy", &name, "--dns", &format!("a.{name}.test"), "--max-uses", "3", "--out", &out_text]);
        minted.assert_exit(0);
        let body = minted.json();
        assert!(body.get("token").is_none(), "the JWT is in --out only: {body}");
        let id = body["id"].as_str().unwrap().to_owned();
        assert_eq!(body["max_uses"], 3);
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let jwt = std::fs::read_to_string(&out).unwrap();
        assert_eq!(jwt.trim().split('.').count(), 3);

        let shown = admin(server, &["tokens", "show", &id]);
        shown.assert_exit(0);
        assert!(shown.stdout.lines().any(|l| l.starts_with("state:") && l.ends_with("active")), "{}", shown.stdout);
        admin(server, &["tokens", "revoke", &id]).assert_exit(0);
        let (csr, _) = make_csr("ec-p256", &[&format!("a.{name}.test")], &[], &[]);
        server.enroll(&csr, jwt.trim()).assert_problem(401, "token.revoked");
    }

    fn fail_auditor_reads_but_cannot_revoke(server: &TestServer) {
        let name = server.unique("cli-aud");
        let dns = format!("a.{name}.test");
        server.create_policy(&policy_json(&name, &[&dns], &[], &[]));
        let token = server.mint_token(&name, &identity(&[&dns], &[], &[]), 1);
        let (csr, _) = make_csr("ec-p256", &[&dns], &[], &[]);
        let enrolled = server.enroll(&csr, &token.token);
        enrolled.assert_status(201);
        let serial = enrolled.body["serial"].as_str().unwrap();

        admin_as(server, server.auditor_token(), &["certificates", "show", serial]).assert_exit(0);
        admin_as(server, server.auditor_token(), &["audit", "--limit", "5"]).assert_exit(0);
        let refused = admin_as(server, server.auditor_token(), &["certificates", "revoke", serial, "--reason", "superseded"]);
        refused.assert_exit(EXIT_FAILURE);
        assert_eq!(refused.error_code(), Some("auth.forbidden"), "{}", refused.stderr);
        assert_eq!(server.certificate(serial).status, CertificateStatus::Issued);
    }

    fn ok_provisioner_register_list_enroll_and_disable(server: &TestServer) {
        let dir = tempfile::tempdir().unwrap();
        let policy = server.unique("cli-prov");
        let dns = format!("a.{policy}.test");
        server.create_policy(&policy_json(&policy, &[&format!("*.{policy}.test")], &[], &[]));
        let provisioner = TestProvisioner::new(&server.unique("orchestrator"));
        let name = provisioner.name.as_str();
        let key_file = write_temp(&dir, "provisioner.pub.pem", &provisioner.public_key_pem);

        // Register from the key file.
        let registered = admin(server, &["provisioners", "register", "--name", name, "--public-key", &key_file, "--policy", &policy, "--max-token-ttl", "5m"]);
        registered.assert_exit(0);
        assert!(registered.stdout.contains(&format!("registered provisioner {name} (ES256")), "{}", registered.stdout);

        // List: a table for people, the page for scripts.
        let table = admin(server, &["provisioners", "list"]);
        table.assert_exit(0);
        let header = table.stdout.lines().next().unwrap();
        assert!(header.starts_with("NAME") && header.contains("KEY ID") && header.contains("STATUS"), "{header}");
        let line = row(&table, name).unwrap_or_else(|| panic!("{name} not listed:\n{}", table.stdout));
        assert!(line.contains("ES256") && line.contains(&policy) && line.contains("5m") && line.ends_with("enabled"), "{line}");
        let page = admin(server, &["--json", "provisioners", "list"]).json();
        assert!(has_item(&page, "name", name), "{page}");
        assert!(page.get("next").is_none(), "{page}");

        // Show: key/value lines with the PEM, and the server's JSON.
        let shown = admin(server, &["provisioners", "show", name]);
        shown.assert_exit(0);
        assert!(shown.stdout.lines().any(|l| l.starts_with("status:") && l.ends_with(" enabled")), "{}", shown.stdout);
        assert!(shown.stdout.contains(provisioner.public_key_pem.trim()), "{}", shown.stdout);
        let shown_json = admin(server, &["provisioners", "show", name, "--json"]).json();
        assert_eq!(shown_json["name"], name);
        assert_eq!(shown_json["algorithm"], "ES256");
        assert_eq!(shown_json["policies"], serde_json::json!([policy]));
        assert_eq!(shown_json["max_token_ttl"], "5m");
        assert!(shown_json.get("disabled_at").is_none(), "{shown_json}");
        let key_id = shown_json["key_id"].as_str().unwrap();
        assert!(line.contains(key_id), "{line}");

        // The enroll audience, as the server puts it in its own tokens.
        let bound = identity(&[&dns], &[], &[]);
        let minted = server.mint_token(&policy, &bound, 1);
        let audience = jwt_segments(&minted.token).1["aud"].as_str().unwrap().to_owned();

        // A provisioner token enrolls once; its replay is refused.
        let token = provisioner.token(&audience, &policy, &bound, &server.unique("jti"));
        let (csr, _key) = make_csr("ec-p256", &[&dns], &[], &[]);
        server.enroll(&csr, &token).assert_status(201);
        let (csr, _key) = make_csr("ec-p256", &[&dns], &[], &[]);
        server.enroll(&csr, &token).assert_problem(401, "token.used");

        // Disabled: a fresh token (new jti) is refused as such.
        let disabled = admin(server, &["provisioners", "disable", name]);
        disabled.assert_exit(0);
        assert!(disabled.stdout.contains(&format!("disabled provisioner {name} at ")), "{}", disabled.stdout);
        let table = admin(server, &["provisioners", "list"]);
        let line = row(&table, name).unwrap_or_else(|| panic!("{name} not listed:\n{}", table.stdout));
        assert!(line.ends_with("disabled"), "{line}");
        assert!(admin(server, &["--json", "provisioners", "show", name]).json()["disabled_at"].is_string());
        let fresh = provisioner.token(&audience, &policy, &bound, &server.unique("jti"));
        let (csr, _key) = make_csr("ec-p256", &[&dns], &[], &[]);
        server.enroll(&csr, &fresh).assert_problem(401, "token.issuer_disabled");

        // Names are never reused: registering it again is refused.
        let again = admin(server, &["provisioners", "register", "--name", name, "--public-key", &key_file, "--policy", &policy]);
        again.assert_exit(EXIT_FAILURE);
        assert_eq!(again.error_code(), Some("provisioner.already_exists"), "{}", again.stderr);
        assert!(again.stdout.is_empty(), "{}", again.stdout);
    }

    fn fail_wrong_root_fingerprint_refuses_first_contact(server: &TestServer) {
        let wrong = format!("sha256:{}", "00".repeat(32));
        let output = run_certmint(
            &["admin", "--server", server.base_url(), "--root-fingerprint", &wrong, "policies", "list"],
            &[("CERTMINT_ADMIN_TOKEN", server.admin_token())],
            None,
        );
        output.assert_exit(EXIT_TRUST_FAILURE);
        assert!(output.stderr.contains("fingerprint"), "{}", output.stderr);
        assert!(!output.stderr.contains(server.admin_token()));

        // The CA bundle path trusts only what the file holds.
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let stranger = rcgen::CertificateParams::new(vec!["stranger.test".to_owned()]).unwrap().self_signed(&key).unwrap();
        let bundle = write_temp(&dir, "bundle.pem", &stranger.pem());
        let output = run_certmint(
            &["admin", "--server", server.base_url(), "--ca-bundle", &bundle, "policies", "list"],
            &[("CERTMINT_ADMIN_TOKEN", server.admin_token())],
            None,
        );
        // An untrusted server certificate fails the handshake (a transport error).
        assert_ne!(output.code, Some(0), "{}", output.stderr);
        let root = write_temp(&dir, "root.pem", server.root_pem());
        let trusted = run_certmint(
            &["admin", "--server", server.base_url(), "--ca-bundle", &root, "policies", "list"],
            &[("CERTMINT_ADMIN_TOKEN", server.admin_token())],
            None,
        );
        trusted.assert_exit(0);
    }

    fn fail_usage_and_auth_errors(server: &TestServer) {
        // No token at all: a usage error before any connection.
        let output = run_certmint(
            &["admin", "--server", server.base_url(), "--root-fingerprint", server.root_fingerprint(), "policies", "list"],
            &[],
            None,
        );
        output.assert_exit(EXIT_USAGE);
        // No trust anchor: refused, never trust on first use.
        let output = run_certmint(
            &["admin", "--server", server.base_url(), "policies", "list"],
            &[("CERTMINT_ADMIN_TOKEN", server.admin_token())],
            None,
        );
        output.assert_exit(EXIT_USAGE);
        // A token the server refuses.
        let refused = admin_as(server, "not-a-jwt", &["policies", "list"]);
        refused.assert_exit(EXIT_FAILURE);
        assert_eq!(refused.error_code(), Some("auth.invalid"), "{}", refused.stderr);
        // A token file works like the variable.
        let dir = tempfile::tempdir().unwrap();
        let token_file = write_temp(&dir, "admin.jwt", &format!("{}\n", server.admin_token()));
        let output = run_certmint(
            &["admin", "--server", server.base_url(), "--root-fingerprint", server.root_fingerprint(), "--token-file", &token_file, "audit", "--limit", "1"],
            &[],
            None,
        );
        output.assert_exit(0);
        // Problems print their code.
        let missing = admin(server, &["policies", "show", "no-such-policy-here"]);
        missing.assert_exit(EXIT_POLICY_REFUSED);
        assert_eq!(missing.error_code(), Some("policy.not_found"), "{}", missing.stderr);
        let bad_status = admin(server, &["certificates", "list", "--status", "valid"]);
        bad_status.assert_exit(EXIT_USAGE);
    }
}
