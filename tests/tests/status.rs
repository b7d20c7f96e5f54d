//! `certmint status` on files a real server issued (SQLite and PostgreSQL):
//! the agent's directory layout and plain files, each layer's verdict, the
//! exit code scripts rely on (0 usable, 9 not usable, 2 usage) and `--json`.
//! The layer logic itself is unit-tested in `client/src/bin/certmint/status/inspect.rs`;
//! these tests check the command on real certificates and real files.

use certmint_e2e::backend_tests;
use certmint_e2e::cli::{
    enroll_files, layer_line, meta_for, run_certmint, write_agent_dir, write_plain_files,
};
use serde_json::Value;

const EXIT_USAGE: i32 = 2;
const EXIT_NOT_USABLE: i32 = 9;

fn status(args: &[&str]) -> certmint_e2e::CommandOutput {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    run_certmint(&all, &[], None)
}

backend_tests! {
    fn ok_agent_directory_is_usable_in_every_layer(server: &TestServer) {
        let dns = format!("api.{}.test", server.unique("st"));
        let files = enroll_files(server, &dns, &["client_auth", "server_auth"]);
        let dir = tempfile::tempdir().unwrap();
        write_agent_dir(dir.path(), &files, Some(&meta_for(&files)));
        let dir_text = dir.path().display().to_string();

        let report = status(&["--dir", &dir_text]);
        report.assert_exit(0);
        for layer in ["files", "key", "chain", "dates", "names", "eku", "renewal"] {
            let (word, detail) = layer_line(&report.stdout, layer)
                .unwrap_or_else(|| panic!("no {layer} line:\n{}", report.stdout));
            assert_eq!(word, "ok", "{layer}: {detail}\n{}", report.stdout);
        }
        let (_, names) = layer_line(&report.stdout, "names").unwrap_or_default();
        assert!(names.contains(&dns), "{names}");
        // The serial a person needs for `certmint admin certificates revoke`.
        let serial = files.bundle["serial"].as_str().unwrap().to_ascii_lowercase();
        assert!(
            report.stdout.lines().any(|line| line == format!("serial  {serial}")),
            "no serial line:\n{}",
            report.stdout
        );

        let json = status(&["--dir", &dir_text, "--json"]);
        json.assert_exit(0);
        let body = json.json();
        assert_eq!(body["usable"], true);
        assert_eq!(body["serial"], serial.as_str());
        let layers: Vec<&str> = body["layers"].as_array().unwrap().iter()
            .map(|layer| layer["name"].as_str().unwrap_or_default()).collect();
        assert_eq!(
            layers,
            ["files", "key", "chain", "dates", "names", "eku", "renewal", "crl", "revocation"]
        );
        // No crl.pem in this directory: revocation is unknown, said so.
        let crl = &body["layers"][7];
        assert_eq!(crl["status"], "warn", "{crl}");
        assert_eq!(body["crls"], serde_json::json!([]));
        assert!(!json.stdout.contains("PRIVATE KEY"), "key material in the report");
    }

    fn fail_key_of_another_certificate(server: &TestServer) {
        let dns = format!("api.{}.test", server.unique("st"));
        let files = enroll_files(server, &dns, &["client_auth"]);
        let other = enroll_files(server, &format!("other.{}.test", server.unique("st")), &["client_auth"]);
        let dir = tempfile::tempdir().unwrap();
        let mut mixed = files.clone();
        mixed.key_pem = other.key_pem.clone();
        write_plain_files(dir.path(), &mixed);
        let path = |name: &str| dir.path().join(name).display().to_string();

        let report = status(&["--key", &path("key.pem"), "--cert", &path("cert.pem"), "--ca", &path("ca.pem")]);
        report.assert_exit(EXIT_NOT_USABLE);
        assert_eq!(layer_line(&report.stdout, "files").map(|l| l.0), Some("ok"), "{}", report.stdout);
        assert_eq!(layer_line(&report.stdout, "key").map(|l| l.0), Some("FAIL"), "{}", report.stdout);
    }

    fn fail_chain_to_a_root_that_is_not_the_issuer(server: &TestServer) {
        let dns = format!("api.{}.test", server.unique("st"));
        let files = enroll_files(server, &dns, &["client_auth"]);
        let dir = tempfile::tempdir().unwrap();
        let mut wrong = files.clone();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        wrong.ca_pem = params.self_signed(&key).unwrap().pem();
        write_plain_files(dir.path(), &wrong);
        let path = |name: &str| dir.path().join(name).display().to_string();

        let report = status(&["--key", &path("key.pem"), "--cert", &path("cert.pem"), "--ca", &path("ca.pem")]);
        report.assert_exit(EXIT_NOT_USABLE);
        assert_eq!(layer_line(&report.stdout, "key").map(|l| l.0), Some("ok"), "{}", report.stdout);
        assert_eq!(layer_line(&report.stdout, "chain").map(|l| l.0), Some("FAIL"), "{}", report.stdout);
    }

    fn fail_client_only_certificate_asked_to_serve(server: &TestServer) {
        let dns = format!("api.{}.test", server.unique("st"));
        let files = enroll_files(server, &dns, &["client_auth"]);
        let dir = tempfile::tempdir().unwrap();
        write_agent_dir(dir.path(), &files, Some(&meta_for(&files)));
        let dir_text = dir.path().display().to_string();

        status(&["--dir", &dir_text, "--role", "client"]).assert_exit(0);
        let report = status(&["--dir", &dir_text, "--role", "server", "--json"]);
        report.assert_exit(EXIT_NOT_USABLE);
        let body: Value = report.json();
        let eku = body["layers"].as_array().unwrap().iter()
            .find(|layer| layer["name"] == "eku").cloned().unwrap_or_default();
        assert_eq!(eku["status"], "fail", "{body}");
    }

    fn ok_key_readable_by_others_warns_but_stays_usable(server: &TestServer) {
        use std::os::unix::fs::PermissionsExt as _;
        let dns = format!("api.{}.test", server.unique("st"));
        let files = enroll_files(server, &dns, &["client_auth"]);
        let dir = tempfile::tempdir().unwrap();
        write_plain_files(dir.path(), &files);
        let key = dir.path().join("key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();

        let report = status(&["--key", &path("key.pem"), "--cert", &path("cert.pem"), "--ca", &path("ca.pem")]);
        // It still works in a handshake, so it warns (exit 0) and says how to fix it.
        report.assert_exit(0);
        let (word, detail) = layer_line(&report.stdout, "files").unwrap_or_default();
        assert_eq!(word, "warn", "{}", report.stdout);
        assert!(detail.contains("chmod 600"), "{detail}");
    }

    fn fail_usage_without_files(server: &TestServer) {
        let _ = server;
        status(&[]).assert_exit(EXIT_USAGE);
    }
}
