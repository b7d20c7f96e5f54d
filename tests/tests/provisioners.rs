//! Provisioners end to end, on SQLite and PostgreSQL: an external issuer
//! registered over the admin API signs its own tokens (ES256 with a key the
//! server never sees), workloads enroll with them exactly once each, even
//! under a burst of parallel requests, and every hostile variant gets its
//! own problem code without consuming anything.

use std::sync::Barrier;

use certmint_e2e::workload::certmint;
use certmint_e2e::{
    b64url, backend_tests, forge_alg_none, forge_hs256, identity, jwt_segments, make_csr,
    policy_json, Auth, RequestBody, TestProvisioner, TestServer,
};
use serde_json::{json, Value};

/// A policy for `*.<name>.internal`, and the enroll audience as an
/// orchestrator finds it: in the directory. It is the `aud` of the server's
/// own tokens too.
fn policy_and_audience(server: &TestServer, prefix: &str) -> (String, String) {
    let name = server.unique(prefix);
    server.create_policy(&policy_json(
        &name,
        &[&format!("*.{name}.internal")],
        &[],
        &[],
    ));
    let directory = server.request(Auth::None, "GET", "/v1/directory", None);
    let audience = directory.body["enroll_audience"]
        .as_str()
        .expect("enroll_audience")
        .to_owned();
    assert_eq!(
        directory.body["endpoints"]["admin_provisioners"],
        "/v1/admin/provisioners"
    );
    let minted = server.mint_token(
        &name,
        &identity(&[&format!("x.{name}.internal")], &[], &[]),
        1,
    );
    assert_eq!(jwt_segments(&minted.token).1["aud"], audience.as_str());
    (name, audience)
}

fn registered(server: &TestServer, policies: &[&str]) -> TestProvisioner {
    let provisioner = TestProvisioner::new(&server.unique("orch"));
    server
        .admin_post(
            "/v1/admin/provisioners",
            &provisioner.registration(policies),
        )
        .assert_status(201);
    provisioner
}

fn enroll(server: &TestServer, dns: &str, token: &str) -> certmint_e2e::Response {
    let (csr, _key) = make_csr("ec-p256", &[dns], &[], &[]);
    server.enroll(&csr, token)
}

backend_tests! {
    fn ok_a_provisioner_token_enrolls_once_even_under_a_burst(server: &TestServer) {
        let (policy, audience) = policy_and_audience(server, "prov");
        let provisioner = registered(server, &[&policy]);
        let info = server.admin_get(&format!("/v1/admin/provisioners/{}", provisioner.name));
        assert_eq!(info.body["algorithm"], "ES256");
        assert_eq!(info.body["max_token_ttl"], "5m");
        let dns = format!("api.{policy}.internal");
        let token = provisioner.token(&audience, &policy, &identity(&[&dns], &[], &[]), "burst-1");

        const PARALLEL: usize = 24;
        let start = Barrier::new(PARALLEL);
        let statuses: Vec<(u16, String)> = std::thread::scope(|scope| {
            let requests: Vec<_> = (0..PARALLEL)
                .map(|_| scope.spawn(|| {
                    let (csr, _key) = make_csr("ec-p256", &[&dns], &[], &[]);
                    start.wait();
                    let response = server.enroll(&csr, &token);
                    (response.status, response.code().to_owned())
                }))
                .collect();
            requests.into_iter().map(|request| request.join().expect("request thread")).collect()
        });
        let issued = statuses.iter().filter(|(status, _)| *status == 201).count();
        assert_eq!(issued, 1, "{statuses:?}");
        assert!(statuses.iter().all(|(status, code)| *status == 201 || code == "token.used"), "{statuses:?}");
        assert_eq!(server.certificates(&format!("policy={policy}")).len(), 1);

        // The token became a one-use record, minted by the provisioner in
        // the audit trail; the certificate names it.
        let certificate = &server.certificates(&format!("policy={policy}"))[0];
        let record = certificate.token_id.clone().expect("the certificate names its token");
        let token_info = server.admin_get(&format!("/v1/admin/tokens/{record}"));
        assert_eq!((token_info.body["uses"].as_u64(), token_info.body["max_uses"].as_u64()), (Some(1), Some(1)));
        let minted_by = server
            .audit_events()
            .into_iter()
            .find(|event| event.kind == "token.minted" && event.subject == record)
            .map(|event| event.actor);
        assert_eq!(minted_by, Some(format!("provisioner:{}", provisioner.name)));

        // Disabling a provisioner revokes the records of its tokens seen so
        // far, in the same write (id: SHA-256 of provisioner:<name>:<jti>).
        let other = registered(server, &[&policy]);
        let other_token = other.token(&audience, &policy, &identity(&[&dns], &[], &[]), "other-1");
        enroll(server, &format!("other.{policy}.internal"), &other_token)
            .assert_problem(403, "token.name_not_allowed");
        let digest = ring::digest::digest(&ring::digest::SHA256, format!("provisioner:{}:other-1", other.name).as_bytes());
        let record_path = format!("/v1/admin/tokens/{}", hex::encode(&digest.as_ref()[..16]));
        assert!(server.admin_get(&record_path).body["revoked_at"].is_null());
        server.admin_delete(&format!("/v1/admin/provisioners/{}", other.name)).assert_status(200);
        assert!(server.admin_get(&record_path).body["revoked_at"].is_string());
        enroll(server, &dns, &other_token).assert_problem(401, "token.issuer_disabled");

        // `certmint enroll` takes a provisioner token like any other.
        let agent_token = provisioner.token(&audience, &policy, &identity(&[&dns], &[], &[]), "agent-1");
        let out = tempfile::tempdir().expect("tempdir");
        let run = certmint(
            &[
                "enroll", "--server", server.base_url(), "--root-fingerprint", server.root_fingerprint(),
                "--token", &agent_token, "--dns", &dns, "--out", &out.path().join("out").display().to_string(),
            ],
            &[],
        );
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert!(!run.stderr.contains(&agent_token), "the token leaked into the log");
    }

    fn fail_hostile_and_mistaken_provisioner_tokens_each_get_their_code(server: &TestServer) {
        let (policy, audience) = policy_and_audience(server, "hostile");
        let provisioner = registered(server, &[&policy]);
        let dns = format!("api.{policy}.internal");
        let ids = identity(&[&dns], &[], &[]);
        let good = provisioner.claims(&audience, &policy, &ids, "good");
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut claims = good.clone();
            edit(&mut claims);
            provisioner.sign(&claims)
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();

        // Algorithm confusion: none, and HS256 keyed with the public key.
        let signed = provisioner.sign(&good);
        enroll(server, &dns, &forge_alg_none(&signed)).assert_problem(401, "token.algorithm_not_allowed");
        enroll(server, &dns, &forge_hs256(&signed, provisioner.public_key_pem.as_bytes()))
            .assert_problem(401, "token.algorithm_not_allowed");
        // Same name, another key: the signature fails.
        let impostor = TestProvisioner::new(&provisioner.name);
        enroll(server, &dns, &impostor.sign(&good)).assert_problem(401, "token.bad_signature");
        // Nobody registered this issuer.
        enroll(server, &dns, &TestProvisioner::new("nobody-here").token(&audience, &policy, &ids, "x"))
            .assert_problem(401, "token.unknown");
        // Claims and the provisioner's limits.
        enroll(server, &dns, &with(&|c| c["aud"] = json!("https://elsewhere.test/v1/enroll")))
            .assert_problem(401, "token.wrong_audience");
        enroll(server, &dns, &with(&|c| { c["iat"] = json!(now - 600); c["exp"] = json!(now - 300); }))
            .assert_problem(401, "token.expired");
        enroll(server, &dns, &with(&|c| c["exp"] = json!(now + 3600)))
            .assert_problem(401, "token.lifetime_too_long");
        enroll(server, &dns, &with(&|c| c["policy"] = json!("not-its-policy")))
            .assert_problem(403, "token.policy_not_allowed");
        enroll(server, &dns, &with(&|c| { c.as_object_mut().expect("object").remove("jti"); }))
            .assert_problem(401, "token.malformed");
        // A name outside the token's identity is refused and uses nothing:
        // the same token then enrolls the name it carries.
        enroll(server, &format!("other.{policy}.internal"), &signed).assert_problem(403, "token.name_not_allowed");
        enroll(server, &dns, &signed).assert_status(201);
        assert_eq!(server.certificates(&format!("policy={policy}")).len(), 1, "nothing else was issued");
        // A jti is spent by its first sight: the same jti with other claims
        // is refused even though the first token was never used.
        let first = provisioner.token(&audience, &policy, &ids, "reused");
        enroll(server, &format!("other.{policy}.internal"), &first).assert_problem(403, "token.name_not_allowed");
        let other_ids = identity(&[&format!("other.{policy}.internal")], &[], &[]);
        let second = provisioner.token(&audience, &policy, &other_ids, "reused");
        enroll(server, &format!("other.{policy}.internal"), &second).assert_problem(401, "token.used");
        // A truncated signature segment is malformed, not a 500.
        let truncated = format!("{}.{}", signed.rsplit_once('.').expect("three segments").0, b64url(b"x"));
        assert_eq!(enroll(server, &dns, &truncated).status, 401);
    }

    fn fail_registrations_that_cannot_work(server: &TestServer) {
        let (policy, _audience) = policy_and_audience(server, "reg");
        let provisioner = TestProvisioner::new(&server.unique("reg"));
        let mut body = provisioner.registration(&[&policy]);
        let attempt = |edit: &dyn Fn(&mut Value)| {
            let mut body = provisioner.registration(&[&policy]);
            edit(&mut body);
            server.admin_post("/v1/admin/provisioners", &body)
        };
        attempt(&|b| b["policies"] = json!(["no-such-policy"])).assert_problem(404, "policy.not_found");
        attempt(&|b| b["policies"] = json!([])).assert_problem(422, "provisioner.invalid");
        // A misspelt field is refused, not silently left at its default.
        attempt(&|b| b["max_ttl"] = json!("1h")).assert_problem(400, "request.malformed");
        attempt(&|b| b["max_token_ttl"] = json!("2h")).assert_problem(422, "provisioner.invalid");
        attempt(&|b| b["name"] = json!("Bad Name")).assert_problem(422, "provisioner.invalid");
        attempt(&|b| b["public_key_pem"] = json!(certmint_e2e::der_to_pem("CERTIFICATE", b"\x30\x00")))
            .assert_problem(422, "provisioner.invalid");
        // Read-only for auditors.
        server
            .request(Auth::Auditor, "POST", "/v1/admin/provisioners", Some(RequestBody::Json(body.clone())))
            .assert_problem(403, "auth.forbidden");
        body["max_token_ttl"] = json!("90s");
        let created = server.admin_post("/v1/admin/provisioners", &body);
        created.assert_status(201);
        assert_eq!(created.body["max_token_ttl"], "90s");
        let listed = server.admin_get("/v1/admin/provisioners");
        let names: Vec<&str> = listed.body["items"].as_array().expect("items").iter()
            .filter_map(|item| item["name"].as_str()).collect();
        assert!(names.contains(&provisioner.name.as_str()), "{names:?}");
        let disabled = server.admin_delete(&format!("/v1/admin/provisioners/{}", provisioner.name));
        disabled.assert_status(200);
        assert!(disabled.body["disabled_at"].is_string());
        server.admin_post("/v1/admin/provisioners", &body).assert_problem(409, "provisioner.already_exists");
        server.admin_delete("/v1/admin/provisioners/no-such").assert_problem(404, "provisioner.not_found");
    }
}
