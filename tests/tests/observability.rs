//! What an operator sees, on SQLite and PostgreSQL: JSON logs without
//! secrets, Prometheus metrics with bounded labels, the certificate
//! inventory with its filters and pagination, the hash-chained audit log,
//! and readiness.
//!
//! All tests of this binary share one server per back end, started with
//! `serve --log-format json`, so the log check reads every line any of them
//! caused. The server is shared, so counts are compared before and after
//! (or restricted to this test's own policies and serials), never assumed
//! exact.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use certmint::wire::{
    AuditEvent, CertificateBundle, CertificateInfo, CertificateStatus, MintedToken, Page,
};
use certmint_e2e::{
    backend_tests, identity, make_csr, policy_json, Auth, Backend, RequestBody, Response,
    ServerOptions, TestServer,
};
use serde_json::{json, Value};

/// `prev_hash` of the first audit event.
const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

// ---- helpers ------------------------------------------------------------------

/// A policy over `*.<name>.internal` with the given default and maximum TTL;
/// returns its name.
fn create_policy(server: &TestServer, prefix: &str, ttl: &str) -> String {
    let name = server.unique(prefix);
    let mut spec = policy_json(&name, &[&format!("*.{name}.internal")], &[], &[]);
    spec["ttl"] = json!({"default": ttl, "max": ttl});
    server.create_policy(&spec);
    name
}

/// Enrolls a fresh ec-p256 key for `name` with `token`; asserts 201.
#[track_caller]
fn enroll(server: &TestServer, name: &str, token: &str) -> CertificateBundle {
    let (csr, _key) = make_csr("ec-p256", &[name], &[], &[]);
    let response = server.enroll(&csr, token);
    response.assert_status(201);
    response.json()
}

/// Mints a one-use token for `api.<policy>.internal`, enrolls with it, then
/// enrolls again with the spent token (refused `token.used`). Returns the
/// bundle and the token.
fn issue_and_reuse(server: &TestServer, policy: &str) -> (CertificateBundle, MintedToken) {
    let name = format!("api.{policy}.internal");
    let minted = server.mint_token(policy, &identity(&[&name], &[], &[]), 1);
    let bundle = enroll(server, &name, &minted.token);
    let (csr, _key) = make_csr("ec-p256", &[&name], &[], &[]);
    server
        .enroll(&csr, &minted.token)
        .assert_problem(401, "token.used");
    (bundle, minted)
}

fn serials(items: &[CertificateInfo]) -> BTreeSet<String> {
    items.iter().map(|info| info.serial.clone()).collect()
}

/// One sample of the exposition: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus / OpenMetrics text format (no exemplars).
#[track_caller]
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metrics line without a value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("metrics value is not a number: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unterminated label set: {line:?}"));
                (name.to_owned(), parse_labels(body, line))
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// `a="x",b="y\"z"` → map, honouring `\\`, `\"` and `\n` escapes.
#[track_caller]
fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("malformed label in {line:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => panic!("dangling escape in {line:?}"),
                },
                '"' => {
                    end = Some(index);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The sum of every sample called `name` whose labels include `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| {
            sample.name == name
                && with
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
        })
        .map(|sample| sample.value)
        .sum()
}

#[track_caller]
fn scrape(server: &TestServer) -> (Vec<Sample>, String) {
    let response = server.get("/metrics");
    response.assert_status(200);
    assert!(
        response.text.trim_end().ends_with("# EOF"),
        "an OpenMetrics exposition ends with # EOF:\n{}",
        response.text
    );
    (parse_metrics(&response.text), response.text)
}

/// The audit chain hash, recomputed from the encoding documented beside the
/// audit log's implementation: SHA-256 over the domain tag, then each field
/// as an 8-byte big-endian length and its bytes.
///
/// A deliberate second implementation, written from the documentation and
/// not shared with the server or the SDK: if their one encoding ever drifts
/// from what is documented (and so from what an auditor's own tool
/// computes), this check fails instead of agreeing with it.
fn audit_hash(event: &AuditEvent) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"certmint-audit-v1");
    let data = canonical_json(&event.data);
    for field in [
        event.prev_hash.as_bytes(),
        &event.seq.to_be_bytes(),
        &event.at.unix_timestamp().to_be_bytes(),
        event.kind.as_bytes(),
        event.actor.as_bytes(),
        event.subject.as_bytes(),
        data.as_bytes(),
    ] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field);
    }
    hex::encode(ctx.finish().as_ref())
}

/// Object keys sorted by their UTF-8 bytes, no whitespace.
fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            let parts: Vec<String> = entries
                .into_iter()
                .map(|(key, item)| {
                    format!("{}:{}", Value::String(key.clone()), canonical_json(item))
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", parts.join(","))
        }
        scalar => scalar.to_string(),
    }
}

/// Reads the log until `done` holds for some parsed line (the server writes
/// the access line as the response leaves), at most 10 s.
#[track_caller]
fn wait_for_log_line(server: &TestServer, done: impl Fn(&Value) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log_since(0);
        if log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .any(|line| done(&line))
        {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the expected log line never appeared:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- tests --------------------------------------------------------------------

backend_tests! {
    options = ServerOptions::default().log_format_json();

    fn ok_json_logs_parse_and_carry_no_secrets(server: &TestServer) {
        let policy = create_policy(server, "logs", "24h");
        let (bundle, minted) = issue_and_reuse(server, &policy);
        // More refusals: a CSR that is not one, an admin token that is not one.
        server
            .enroll(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &server.mint_token(&policy, &identity(&[&format!("x.{policy}.internal")], &[], &[]), 1).token,
            )
            .assert_status(400);
        server
            .request(Auth::Bearer("not-a-jwt"), "GET", "/v1/admin/policies", None)
            .assert_problem(401, "auth.invalid");
        server.certificate(&bundle.serial);

        // The refused re-use was logged (as a JSON access line).
        let log = wait_for_log_line(server, |line| {
            line["http.route"] == "/v1/enroll" && line["http.status"] == 401
        });
        assert!(log.lines().count() >= 5, "too few log lines:\n{log}");

        let mut secrets: Vec<(String, String)> = vec![
            ("the HSM PIN".into(), server.hsm_pin().to_owned()),
            ("the admin token".into(), server.admin_token().to_owned()),
            ("the auditor token".into(), server.auditor_token().to_owned()),
            ("a PEM private key".into(), "PRIVATE KEY".into()),
        ];
        for token in server.minted_tokens() {
            let signature = token.rsplit('.').next().unwrap_or_default().to_owned();
            secrets.push((format!("a bootstrap JWT's signature ({signature})"), signature));
            secrets.push(("a bootstrap JWT".into(), token));
        }
        assert!(
            secrets.iter().any(|(_, secret)| *secret == minted.token),
            "the token this test minted must be among those checked"
        );
        // Other tests share the server: a line still being written is not
        // checked yet.
        let complete = &log[..log.rfind('\n').map_or(0, |end| end + 1)];
        for (number, line) in complete.lines().enumerate() {
            let number = number + 1;
            let parsed: Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("log line {number} is not JSON ({error}): {line}"));
            let object = parsed
                .as_object()
                .unwrap_or_else(|| panic!("log line {number} is not a JSON object: {line}"));
            let level = object.get("level").and_then(Value::as_str);
            assert!(
                matches!(level, Some("TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR")),
                "log line {number} has no level: {line}"
            );
            assert!(
                object.get("message").and_then(Value::as_str).is_some_and(|m| !m.is_empty()),
                "log line {number} has no message: {line}"
            );
            for (what, secret) in &secrets {
                assert!(
                    !line.contains(secret.as_str()),
                    "log line {number} contains {what}: {line}"
                );
            }
        }
    }

    fn ok_metrics_count_issuance_refusals_and_latency_by_route(server: &TestServer) {
        let (before, _) = scrape(server);
        let policy = create_policy(server, "metrics", "24h");
        let (bundle, minted) = issue_and_reuse(server, &policy);
        // A route with an id in its path.
        server.certificate(&bundle.serial);
        let (after, text) = scrape(server);

        let delta = |name: &str, with: &[(&str, &str)]| total(&after, name, with) - total(&before, name, with);
        assert!(
            delta("certmint_certificates_issued_total", &[]) >= 1.0,
            "certmint_certificates_issued_total did not grow:\n{text}"
        );
        assert!(
            delta("certmint_refusals_total", &[("code", "token.used")]) >= 1.0,
            "certmint_refusals_total{{code=\"token.used\"}} did not grow:\n{text}"
        );
        assert!(
            delta("certmint_hsm_sign_duration_seconds_count", &[]) >= 1.0,
            "certmint_hsm_sign_duration_seconds_count did not grow:\n{text}"
        );
        assert!(
            delta("certmint_db_duration_seconds_count", &[]) >= 1.0,
            "certmint_db_duration_seconds_count did not grow:\n{text}"
        );
        for status in ["201", "401"] {
            assert!(
                delta(
                    "certmint_http_request_duration_seconds_count",
                    &[("route", "/v1/enroll"), ("method", "POST"), ("status", status)]
                ) >= 1.0,
                "no /v1/enroll {status} in certmint_http_request_duration_seconds:\n{text}"
            );
        }
        assert!(
            delta(
                "certmint_http_request_duration_seconds_count",
                &[("route", "/v1/admin/certificates/{serial}")]
            ) >= 1.0,
            "GET /v1/admin/certificates/<serial> must count under its route pattern:\n{text}"
        );
        // SQLite writes go through the group-commit writer, whose totals say
        // how many write transactions share a durable COMMIT; PostgreSQL
        // has no such writer and no such series.
        let writes = delta("certmint_db_group_commit_writes_total", &[]);
        let batches = delta("certmint_db_group_commit_batches_total", &[]);
        match server.backend() {
            Backend::Sqlite => assert!(
                writes >= 2.0 && batches >= 1.0 && writes >= batches,
                "group-commit counters did not follow an enrollment ({writes} writes, {batches} batches):\n{text}"
            ),
            Backend::Postgres => assert!(
                !text.contains("certmint_db_group_commit"),
                "PostgreSQL has no group-commit writer:\n{text}"
            ),
        }
        // The served TLS certificate's notAfter, for expiry alerts: in the
        // future, within the default 24h lifetime.
        let expiry = total(&after, "certmint_server_certificate_expiry_timestamp_seconds", &[]);
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
        assert!(
            expiry > now && expiry <= now + 24.0 * 3600.0 + 300.0,
            "certmint_server_certificate_expiry_timestamp_seconds {expiry} is not within 24h of {now}:\n{text}"
        );
        // Labels are bounded: no raw path, serial or token id anywhere.
        for sample in &after {
            for (key, value) in &sample.labels {
                for id in [bundle.serial.as_str(), minted.id.as_str(), policy.as_str()] {
                    assert!(
                        !value.contains(id),
                        "{}{{{key}={value:?}}} carries an id ({id})",
                        sample.name
                    );
                }
            }
        }
    }

    fn ok_inventory_filters_paginates_and_lets_the_auditor_read_only(server: &TestServer) {
        let short = create_policy(server, "inv-short", "1h");
        let long = create_policy(server, "inv-long", "48h");
        let issue = |policy: &str, count: usize| -> Vec<CertificateBundle> {
            let name = format!("api.{policy}.internal");
            let minted = server.mint_token(policy, &identity(&[&name], &[], &[]), 3);
            (0..count).map(|_| enroll(server, &name, &minted.token)).collect()
        };
        let short_bundles = issue(&short, 2);
        let long_bundles = issue(&long, 3);
        for bundle in &short_bundles {
            let lifetime = bundle.not_after - bundle.not_before;
            assert!(lifetime <= time::Duration::minutes(70), "1h policy issued {lifetime}");
        }
        for bundle in &long_bundles {
            let lifetime = bundle.not_after - bundle.not_before;
            assert_eq!(lifetime, time::Duration::hours(48), "48h policy issued {lifetime}");
        }
        let short_serials: BTreeSet<String> = short_bundles.iter().map(|b| b.serial.clone()).collect();
        let long_serials: BTreeSet<String> = long_bundles.iter().map(|b| b.serial.clone()).collect();
        let mine: BTreeSet<String> = short_serials.union(&long_serials).cloned().collect();
        let revoked = long_bundles[0].serial.clone();

        // The auditor reads the inventory but cannot revoke.
        let auditor_list = server.request(Auth::Auditor, "GET", &format!("/v1/admin/certificates?policy={long}"), None);
        auditor_list.assert_status(200);
        assert_eq!(serials(&auditor_list.json::<Page<CertificateInfo>>().items), long_serials);
        server
            .request(Auth::Auditor, "GET", &format!("/v1/admin/certificates/{revoked}"), None)
            .assert_status(200);
        server
            .request(
                Auth::Auditor,
                "POST",
                &format!("/v1/admin/certificates/{revoked}/revoke"),
                Some(RequestBody::Json(json!({"reason": "key_compromise"}))),
            )
            .assert_problem(403, "auth.forbidden");
        // The role is checked before the body is read: an auditor's garbage
        // or oversized body is a 403 too, not a 400 or 413.
        for (path, body) in [
            (format!("/v1/admin/certificates/{revoked}/revoke"), b"{not json".to_vec()),
            ("/v1/admin/policies".to_owned(), vec![b'x'; 100_000]),
            ("/v1/admin/tokens".to_owned(), b"[]".to_vec()),
        ] {
            server
                .request(
                    Auth::Auditor,
                    "POST",
                    &path,
                    Some(RequestBody::Raw {
                        content_type: "application/json".into(),
                        bytes: body,
                    }),
                )
                .assert_problem(403, "auth.forbidden");
        }
        assert_eq!(server.certificate(&revoked).status, CertificateStatus::Issued);

        let response = server.admin_post(
            &format!("/v1/admin/certificates/{revoked}/revoke"),
            &json!({"reason": "key_compromise"}),
        );
        response.assert_status(200);
        assert_eq!(response.json::<CertificateInfo>().status, CertificateStatus::Revoked);

        // Filters.
        assert_eq!(serials(&server.certificates(&format!("policy={short}"))), short_serials);
        assert_eq!(serials(&server.certificates(&format!("policy={long}"))), long_serials);
        assert_eq!(
            serials(&server.certificates(&format!("policy={long}&status=revoked"))),
            BTreeSet::from([revoked.clone()])
        );
        let mut still_issued = long_serials.clone();
        still_issued.remove(&revoked);
        assert_eq!(serials(&server.certificates(&format!("policy={long}&status=issued"))), still_issued);
        let all_revoked = serials(&server.certificates("status=revoked"));
        assert_eq!(
            all_revoked.intersection(&mine).cloned().collect::<BTreeSet<_>>(),
            BTreeSet::from([revoked.clone()]),
            "?status=revoked"
        );
        for info in server.certificates("status=revoked") {
            assert_eq!(info.status, CertificateStatus::Revoked, "?status=revoked listed {}", info.serial);
        }
        let expiring = serials(&server.certificates("expiring_within=2h"));
        assert_eq!(
            expiring.intersection(&mine).cloned().collect::<BTreeSet<_>>(),
            short_serials,
            "?expiring_within=2h must list the 1h certificates and not the 48h ones"
        );
        assert_eq!(serials(&server.certificates(&format!("policy={long}&expiring_within=2h"))), BTreeSet::new());

        // Pagination: limit=2, following `next` until it is absent.
        let walk = |query: &str| -> (Vec<String>, usize) {
            let mut seen = Vec::new();
            let mut pages = 0;
            let mut cursor: Option<String> = None;
            loop {
                let mut path = format!("/v1/admin/certificates?{query}limit=2");
                if let Some(cursor) = &cursor {
                    path.push_str(&format!("&cursor={cursor}"));
                }
                let response = server.admin_get(&path);
                response.assert_status(200);
                let page: Page<CertificateInfo> = response.json();
                assert!(page.items.len() <= 2, "{path}: {} items on a limit=2 page", page.items.len());
                pages += 1;
                assert!(pages <= 10_000, "{query}: the cursor never ends");
                seen.extend(page.items.into_iter().map(|info| info.serial));
                match page.next {
                    Some(next) => {
                        assert!(
                            next.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
                            "cursor {next:?} needs URL encoding"
                        );
                        cursor = Some(next);
                    }
                    None => return (seen, pages),
                }
            }
        };
        let (long_walk, pages) = walk(&format!("policy={long}&"));
        assert_eq!(long_walk.len(), 3, "{long_walk:?}");
        assert_eq!(long_walk.iter().cloned().collect::<BTreeSet<_>>(), long_serials);
        assert_eq!(pages, 2, "3 certificates at limit=2 are two pages");
        let (everything, _) = walk("");
        let unique: BTreeSet<String> = everything.iter().cloned().collect();
        assert_eq!(unique.len(), everything.len(), "a certificate was listed twice: {everything:?}");
        assert!(mine.is_subset(&unique), "pagination lost certificates: {mine:?} vs {everything:?}");

        // Cursors are opaque, and the server checks them.
        let page: Page<CertificateInfo> = server.admin_get(&format!("/v1/admin/certificates?policy={long}&limit=1")).json();
        let good = page.next.expect("a next cursor");
        let audit_cursor = server
            .admin_get("/v1/admin/audit?limit=1")
            .json::<Page<AuditEvent>>()
            .next
            .expect("an audit cursor");
        for bad in [
            "not-a-cursor".to_owned(),
            format!("{good}0"),
            format!("c1.{}.{}", hex::encode("soon"), hex::encode("00")),
            format!("{good}.00"),
            good.replacen("c1.", "c2.", 1),
            audit_cursor,
            good.chars().map(|c| if c == '.' { '.' } else { 'z' }).collect(),
        ] {
            server
                .admin_get(&format!("/v1/admin/certificates?cursor={bad}"))
                .assert_problem(400, "request.invalid_parameter");
        }
    }

    fn ok_audit_records_every_change_on_an_intact_chain(server: &TestServer) {
        let policy = create_policy(server, "audit", "24h");
        let mut spec = policy_json(&policy, &[&format!("*.{policy}.internal")], &[], &[]);
        spec["description"] = json!("replaced by the audit test");
        server
            .admin_put(&format!("/v1/admin/policies/{policy}"), &spec)
            .assert_status(200);
        let name = format!("api.{policy}.internal");
        let used = server.mint_token(&policy, &identity(&[&name], &[], &[]), 1);
        let bundle = enroll(server, &name, &used.token);
        server
            .admin_post(
                &format!("/v1/admin/certificates/{}/revoke", bundle.serial),
                &json!({"reason": "superseded"}),
            )
            .assert_status(200);
        let unused = server.mint_token(&policy, &identity(&[&name], &[], &[]), 1);
        server
            .admin_delete(&format!("/v1/admin/tokens/{}", unused.id))
            .assert_status(200);
        server
            .admin_delete(&format!("/v1/admin/policies/{policy}"))
            .assert_status(200);

        let events = server.audit_events();
        assert!(!events.is_empty());
        assert_eq!(events[0].seq, 1, "the chain starts at seq 1");
        assert_eq!(events[0].prev_hash, GENESIS_HASH, "the first event links to the genesis hash");
        for event in &events {
            assert_eq!(
                event.hash,
                audit_hash(event),
                "event {} ({}) does not hash to its stored hash",
                event.seq,
                event.kind
            );
        }
        for pair in events.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "audit seq has a gap after {}", pair[0].seq);
            assert_eq!(pair[1].prev_hash, pair[0].hash, "prev_hash does not link event {}", pair[1].seq);
        }

        let position = |kind: &str, subject: &str| -> usize {
            events
                .iter()
                .position(|event| event.kind == kind && event.subject == subject)
                .unwrap_or_else(|| {
                    panic!(
                        "no audit event {kind} for {subject}; events: {:?}",
                        events.iter().map(|e| (&e.kind, &e.subject)).collect::<Vec<_>>()
                    )
                })
        };
        let expected = [
            ("policy.created", policy.as_str()),
            ("policy.replaced", policy.as_str()),
            ("token.minted", used.id.as_str()),
            ("certificate.signing", bundle.serial.as_str()),
            ("certificate.issued", bundle.serial.as_str()),
            ("certificate.revoked", bundle.serial.as_str()),
            ("token.minted", unused.id.as_str()),
            ("token.revoked", unused.id.as_str()),
            ("policy.disabled", policy.as_str()),
        ];
        let positions: Vec<usize> = expected.iter().map(|(kind, subject)| position(kind, subject)).collect();
        assert!(
            positions.windows(2).all(|pair| pair[0] < pair[1]),
            "events out of order: {:?}",
            expected.iter().zip(&positions).collect::<Vec<_>>()
        );
        for ((kind, _), index) in expected.iter().zip(&positions) {
            let actor = &events[*index].actor;
            // The enrollment is the token's doing; recording the signed
            // certificate is the store's own follow-up.
            let wanted = match *kind {
                "certificate.signing" => format!("token:{}", used.id),
                "certificate.issued" => "system".to_owned(),
                _ => "admin:e2e-admin".to_owned(),
            };
            assert_eq!(actor, &wanted, "actor of {kind}");
        }
        for event in &events {
            let data = event.data.to_string();
            for token in [&used.token, &unused.token, &server.admin_token().to_owned()] {
                assert!(!data.contains(token.as_str()), "audit event {} carries a token", event.seq);
            }
        }
    }

    fn fail_inventory_cursor_with_a_non_hex_serial(server: &TestServer) {
        // Shaped like the server's cursors (`c1.<hex created_at>.<hex serial>`),
        // but serials are hex, so the server cannot have produced these.
        for serial in ["ab\u{0}", "zz", "é"] {
            let cursor = format!("c1.{}.{}", hex::encode("1700000000"), hex::encode(serial));
            server
                .admin_get(&format!("/v1/admin/certificates?cursor={cursor}"))
                .assert_problem(400, "request.invalid_parameter");
        }
    }

    fn ok_readyz_reports_database_and_hsm(server: &TestServer) {
        let response: Response = server.get("/readyz");
        response.assert_status(200);
        assert_eq!(response.body["database"], "ok", "{}", response.text);
        assert_eq!(response.body["hsm"], "ok", "{}", response.text);
        assert_eq!(response.body["status"], "ready", "{}", response.text);
    }
}

/// Tests that start a server of their own.
mod own_server {
    use super::*;

    backend_tests! {
        /// An `expiring_within` that parses as a duration but puts the
        /// horizon past year 9999: a 400 `request.invalid_parameter`, like
        /// any other bad filter. It runs on a server of its own because the
        /// server once panicked on it: should that come back, the panic
        /// message (plain text on stderr) must fail this test only, not the
        /// JSON log test of the shared server.
        fn fail_inventory_expiring_within_beyond_the_calendar(backend: Backend) {
            let Some(server) = TestServer::builder(backend).log_format_json().start() else {
                return;
            };
            certmint_e2e::run_test_on(
                Some(&server),
                "fail_inventory_expiring_within_beyond_the_calendar",
                |server| {
                    for window in ["100000000000d", "9999999999999999s"] {
                        server
                            .admin_get(&format!("/v1/admin/certificates?expiring_within={window}"))
                            .assert_problem(400, "request.invalid_parameter");
                    }
                },
            );
        }
    }
}
