//! End-to-end harness for certmint: runs the real `certmint-server` binary
//! against SoftHSM2 and SQLite or PostgreSQL, and talks to it over real TLS.
//!
//! Design overview:
//!
//! ```text
//!   test body ──► TestServer helpers ──HTTPS (rustls, trusts root.pem only)──► certmint-server serve
//!                     │                                                           │
//!                     ├─ make_csr (rcgen; openssl for RSA)                        ├─ SoftHSM2 token (own dir)
//!                     ├─ forge_* (hostile JWTs)                                   └─ SQLite file / PostgreSQL db
//!                     └─ verify_* (rustls-webpki and `openssl verify`)
//! ```
//!
//! [`TestServer::start`] and [`TestServer::shared`] run `init` with an
//! ec-p256 CA and text logs; [`TestServer::builder`] takes [`ServerOptions`]
//! (CA key type, JSON logs, external-root mode). In external-root mode the
//! test plays the offline root with `openssl` ([`OfflineRoot`]) and installs
//! the chain with `ca import-chain`; [`ServerBuilder::init_external_root`]
//! stops at the pending CA ([`PendingCa`]) for tests of that state.
//!
//! Every server gets its own temporary directory, SoftHSM2 token directory
//! and `softhsm2.conf`, PINs, free port and database. The SoftHSM2 and PIN
//! environment is passed to the *child* processes only; this process never
//! calls `set_var`.
//!
//! Lifetime: `serve` runs under a small `sh` supervisor whose stdin is a pipe
//! held by this process. When the pipe closes (the [`TestServer`] is dropped,
//! or the test process exits for any reason, even SIGKILL) the supervisor
//! stops the server, drops the PostgreSQL database and removes the directory.
//! That is what lets a test binary share one server per back end in a
//! `static` (which Rust never drops) without leaking processes or databases.
//! Set `CERTMINT_E2E_KEEP=1` to keep the directory for inspection.
//!
//! Invariants checked for every test run through [`backend_tests!`]: no
//! response is ever a 500; every error is `application/problem+json` with a
//! `code`; every certificate a client received is in the inventory as
//! issued (or revoked) when the test ends.
//!
//! Environment:
//! - `CERTMINT_SERVER_BIN`: the server binary (default: `target/debug/certmint-server`
//!   found by walking up from the test executable).
//! - `CERTMINT_TEST_PKCS11_MODULE`: SoftHSM2 module (default `/usr/lib/softhsm/libsofthsm2.so`).
//! - `CERTMINT_REQUIRE_SOFTHSM=1`: a missing SoftHSM2 fails instead of skipping.
//! - `CERTMINT_TEST_POSTGRES_URL`: where to create per-server databases
//!   (default `postgres://postgres@127.0.0.1:5432/test`).
//! - `CERTMINT_REQUIRE_POSTGRES=1`: an unreachable PostgreSQL fails instead of skipping.

use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod cli;
pub mod workload;

use base64::Engine as _;
use certmint::wire::{AuditEvent, CertificateInfo, CertificateStatus, MintedToken, Page};
use der::{Decode as _, Encode as _};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Default SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Default PostgreSQL URL (its database is only used to create and drop others).
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// How long a server may take to answer `/healthz` after `serve` starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout of the HTTP client.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// OID of id-kp-clientAuth (1.3.6.1.5.5.7.3.2), DER content bytes.
pub const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
/// OID of id-kp-serverAuth (1.3.6.1.5.5.7.3.1), DER content bytes.
pub const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

/// Which database the server under test uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file in the server's directory.
    Sqlite,
    /// A fresh PostgreSQL database `certmint_e2e_<random>`.
    Postgres,
}

/// Whom a request authenticates as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth<'a> {
    /// No `Authorization` header.
    None,
    /// An `admin` role admin token.
    Admin,
    /// An `auditor` role admin token.
    Auditor,
    /// `Authorization: Bearer <this>`, whatever it is.
    Bearer(&'a str),
    /// No `Authorization` header; the TLS handshake presents this holder's
    /// client certificate ([`TestServer::holder`]).
    Holder(&'a Holder),
}

/// A TLS client with a client certificate (mutual TLS).
#[derive(Clone, Debug)]
pub struct Holder {
    client: reqwest::blocking::Client,
    description: String,
}

/// Holders compare by the certificate they present (for `Auth`'s derives).
impl PartialEq for Holder {
    fn eq(&self, other: &Self) -> bool {
        self.description == other.description
    }
}

impl Eq for Holder {}

/// A response, with the body kept both as text and (when it parses) JSON.
#[derive(Clone, Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type` header, empty when absent.
    pub content_type: String,
    /// `Retry-After` header, when present.
    pub retry_after: Option<String>,
    /// Body as text.
    pub text: String,
    /// Body as JSON, `Null` when it is not JSON.
    pub body: Value,
    /// What was sent, for failure messages.
    pub request: String,
}

impl Response {
    /// The problem `code`, or `""` when the body has none.
    pub fn code(&self) -> &str {
        self.body.get("code").and_then(Value::as_str).unwrap_or("")
    }

    /// Asserts an RFC 9457 problem with this status and code (never the message).
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "{}\n  expected {status} {code}, got {} {}",
            self.request,
            self.status,
            self.text
        );
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "{}: problem without application/problem+json: {:?}",
            self.request,
            self.content_type
        );
        assert_eq!(
            self.body.get("status").and_then(Value::as_u64),
            Some(u64::from(status)),
            "{}: problem `status` member disagrees with the HTTP status: {}",
            self.request,
            self.text
        );
    }

    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "{}\n  expected {status}, got {} {}",
            self.request, self.status, self.text
        );
        self
    }

    /// The codes of the `refusals` member, in order.
    pub fn refusal_codes(&self) -> Vec<String> {
        self.body
            .get("refusals")
            .and_then(Value::as_array)
            .map(|refusals| {
                refusals
                    .iter()
                    .filter_map(|refusal| refusal.get("code").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deserialises the body.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.body.clone()).unwrap_or_else(|error| {
            panic!(
                "{}: body does not decode as {}: {error}\n{}",
                self.request,
                std::any::type_name::<T>(),
                self.text
            )
        })
    }
}

/// Stops the server when dropped (see the module docs).
struct Supervisor {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Supervisor {
    fn send(&mut self, command: &str) {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("the supervisor pipe is open");
        writeln!(stdin, "{command}").expect("write to the supervisor");
        stdin.flush().expect("flush the supervisor pipe");
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Closing the pipe is the stop signal; the supervisor then stops the
        // server, drops the database and removes the directory.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// One running `certmint-server serve`, with everything it needs.
pub struct TestServer {
    backend: Backend,
    options: ServerOptions,
    dir: PathBuf,
    config_path: PathBuf,
    base_url: String,
    root_pem: String,
    root_fingerprint: String,
    /// The test's offline root, PEM, in external-root mode.
    offline_root_pem: Option<String>,
    admin_token: String,
    auditor_token: String,
    hsm_pin: String,
    module: PathBuf,
    softhsm_conf: PathBuf,
    log_path: PathBuf,
    server_pid: Mutex<u32>,
    database_name: Option<String>,
    client: reqwest::blocking::Client,
    /// Serials handed to clients and not yet checked against the inventory.
    received: Mutex<Vec<String>>,
    /// Every bootstrap JWT minted through [`TestServer::mint_token`].
    minted: Mutex<Vec<String>>,
    /// Dropped last (fields drop in declaration order): stopping the server
    /// removes `dir`, so nothing may need it afterwards.
    supervisor: Mutex<Supervisor>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("backend", &self.backend)
            .field("dir", &self.dir)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Why a server could not be started for a back end that is not mandatory.
#[derive(Debug, Clone)]
pub struct Skip(pub String);

impl TestServer {
    /// Starts a fresh server on `backend`; `None` (after printing why) when a
    /// non-mandatory dependency (SoftHSM2, PostgreSQL) is missing. Panics,
    /// with the server's output, on any other failure.
    pub fn start(backend: Backend) -> Option<TestServer> {
        match Self::try_start(backend) {
            Ok(server) => Some(server),
            Err(Skip(reason)) => {
                eprintln!("note: skipping {backend:?} end-to-end test: {reason}");
                None
            }
        }
    }

    /// The server this test binary shares for `backend`, started on first use.
    pub fn shared(backend: Backend) -> Option<&'static TestServer> {
        static SQLITE: OnceLock<Result<TestServer, Skip>> = OnceLock::new();
        static POSTGRES: OnceLock<Result<TestServer, Skip>> = OnceLock::new();
        let cell = match backend {
            Backend::Sqlite => &SQLITE,
            Backend::Postgres => &POSTGRES,
        };
        match cell.get_or_init(|| Self::try_start(backend)) {
            Ok(server) => Some(server),
            Err(Skip(reason)) => {
                eprintln!("note: skipping {backend:?} end-to-end test: {reason}");
                None
            }
        }
    }

    fn try_start(backend: Backend) -> Result<TestServer, Skip> {
        Self::builder(backend).try_start()
    }

    /// A server with options other than the defaults:
    ///
    /// ```ignore
    /// TestServer::builder(Backend::Sqlite)
    ///     .key_type("ec-p384")
    ///     .log_format_json()
    ///     .external_root(true)
    ///     .start()
    /// ```
    pub fn builder(backend: Backend) -> ServerBuilder {
        ServerBuilder {
            backend,
            options: ServerOptions::default(),
        }
    }

    /// `serve` and the admin tokens, once the CA is complete and `root.pem`
    /// sits beside the config.
    fn launch(
        mut prepared: Prepared,
        root_fingerprint: String,
        offline_root_pem: Option<String>,
    ) -> TestServer {
        let root_pem = std::fs::read_to_string(prepared.dir.join("root.pem"))
            .unwrap_or_else(|error| panic!("no root.pem beside the config ({error})"));
        let child_env = prepared.child_env();
        let supervisor = spawn_supervisor(
            &prepared.binary,
            &child_env,
            &prepared.config_path,
            &prepared.log_path,
            &prepared.dir,
            prepared.database.as_ref(),
            if prepared.options.log_format_json {
                "json"
            } else {
                "text"
            },
        );
        // From here on the supervisor owns the directory and the database.
        prepared.clean_up = false;
        let pid_file = prepared.dir.join("server.pid");
        let client = https_client(&root_pem);
        let base_url = format!("https://localhost:{}", prepared.port);
        let server_pid = wait_for_pid_file(&pid_file, &prepared.log_path);
        wait_for_health(&client, &base_url, server_pid, &prepared.log_path);

        let admin_token =
            mint_admin_token(&prepared.binary, &child_env, &prepared.config_path, "admin");
        let auditor_token = mint_admin_token(
            &prepared.binary,
            &child_env,
            &prepared.config_path,
            "auditor",
        );
        TestServer {
            backend: prepared.backend,
            options: prepared.options.clone(),
            dir: prepared.dir.clone(),
            config_path: prepared.config_path.clone(),
            base_url,
            root_pem,
            root_fingerprint,
            offline_root_pem,
            admin_token,
            auditor_token,
            hsm_pin: prepared.hsm_pin.clone(),
            module: prepared.module.clone(),
            softhsm_conf: prepared.softhsm_conf.clone(),
            log_path: prepared.log_path.clone(),
            server_pid: Mutex::new(server_pid),
            database_name: prepared
                .database
                .as_ref()
                .map(|database| database.name.clone()),
            client,
            received: Mutex::new(Vec::new()),
            minted: Mutex::new(Vec::new()),
            supervisor: Mutex::new(supervisor),
        }
    }

    /// The back end this server runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The options this server was started with.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// The offline root the test signed the issuing CA with (external-root
    /// mode only), PEM.
    pub fn offline_root_pem(&self) -> Option<&str> {
        self.offline_root_pem.as_deref()
    }

    /// The HSM user PIN (to check it never leaks into logs or responses).
    pub fn hsm_pin(&self) -> &str {
        &self.hsm_pin
    }

    /// Every bootstrap JWT minted so far through [`TestServer::mint_token`].
    pub fn minted_tokens(&self) -> Vec<String> {
        self.minted.lock().expect("minted tokens lock").clone()
    }

    /// The server's directory (config, root.pem, token key, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `https://localhost:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `root.pem` as written by `init`.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// `sha256:<hex>` as printed by `init`.
    pub fn root_fingerprint(&self) -> &str {
        &self.root_fingerprint
    }

    /// An admin-role admin JWT.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// An auditor-role admin JWT.
    pub fn auditor_token(&self) -> &str {
        &self.auditor_token
    }

    /// Process id of `certmint-server serve`.
    pub fn server_pid(&self) -> u32 {
        *self.server_pid.lock().expect("server pid lock")
    }

    /// Stops `certmint-server serve` (SIGTERM) and waits until it is gone;
    /// the database, token and directory stay. Use [`TestServer::start_serving`]
    /// to bring it back on the same port.
    pub fn stop_serving(&self) {
        let stopped = self.dir.join("server.stopped");
        self.supervisor
            .lock()
            .expect("supervisor lock")
            .send("stop");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !stopped.exists() {
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `serve` again after [`TestServer::stop_serving`] and waits for
    /// `/healthz`.
    pub fn start_serving(&self) {
        self.supervisor
            .lock()
            .expect("supervisor lock")
            .send("start");
        let pid_file = self.dir.join("server.pid");
        let pid = wait_for_pid_file(&pid_file, &self.log_path);
        wait_for_health(&self.client, &self.base_url, pid, &self.log_path);
        *self.server_pid.lock().expect("server pid lock") = pid;
    }

    /// A client that presents `certificate_pem` (leaf, then intermediates)
    /// and `key_pem` in every handshake: for `/v1/renew` and `/v1/revoke`.
    pub fn holder(&self, certificate_pem: &str, key_pem: &str) -> Holder {
        Holder {
            client: mtls_client(&self.root_pem, certificate_pem, key_pem),
            description: pem_chain(certificate_pem)
                .first()
                .map(|der| {
                    hex::encode(&ring::digest::digest(&ring::digest::SHA256, der).as_ref()[..8])
                })
                .unwrap_or_default(),
        }
    }

    /// The PostgreSQL database this server uses (`None` on SQLite).
    pub fn database_name(&self) -> Option<&str> {
        self.database_name.as_deref()
    }

    /// The server's log so far, from byte `offset`.
    pub fn log_since(&self, offset: u64) -> String {
        read_from(&self.log_path, offset)
    }

    /// Current length of the server's log.
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log_path).map_or(0, |meta| meta.len())
    }

    /// A name unique to this run: `<prefix>-<6 hex>`, valid as a policy name.
    pub fn unique(&self, prefix: &str) -> String {
        format!("{prefix}-{}", random_hex(3))
    }

    // ---- HTTP -------------------------------------------------------------

    /// Sends a request. Panics on transport errors, on any 500, and on an
    /// error status without a problem document.
    #[track_caller]
    pub fn request(
        &self,
        auth: Auth<'_>,
        method: &str,
        path: &str,
        body: Option<RequestBody>,
    ) -> Response {
        let response = self.request_unchecked(auth, method, path, body);
        assert_well_formed(&response);
        response
    }

    /// Sends a request and returns whatever came back; panics only on
    /// transport errors. For probes that collect every offender first.
    #[track_caller]
    pub fn request_unchecked(
        &self,
        auth: Auth<'_>,
        method: &str,
        path: &str,
        body: Option<RequestBody>,
    ) -> Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid HTTP method");
        let client = match auth {
            Auth::Holder(holder) => &holder.client,
            _ => &self.client,
        };
        let mut builder = client.request(method.clone(), format!("{}{path}", self.base_url));
        match auth {
            Auth::None => {}
            Auth::Admin => builder = builder.bearer_auth(&self.admin_token),
            Auth::Auditor => builder = builder.bearer_auth(&self.auditor_token),
            Auth::Bearer(credential) => builder = builder.bearer_auth(credential),
            Auth::Holder(_) => {}
        }
        let who = match auth {
            Auth::None => "anonymous",
            Auth::Admin => "admin",
            Auth::Auditor => "auditor",
            Auth::Bearer(_) => "custom bearer",
            Auth::Holder(holder) => &format!("holder of {}…", holder.description),
        };
        let mut description = format!("{method} {path} ({who})");
        match body {
            None => {}
            Some(RequestBody::Json(value)) => {
                let text = value.to_string();
                if text.len() <= 2048 {
                    let _ = write!(description, " {text}");
                } else {
                    let _ = write!(description, " <{} bytes of JSON>", text.len());
                }
                builder = builder
                    .header("content-type", "application/json")
                    .body(text);
            }
            Some(RequestBody::Raw {
                content_type,
                bytes,
            }) => {
                let _ = write!(description, " <{} bytes of {content_type}>", bytes.len());
                builder = builder.header("content-type", content_type).body(bytes);
            }
            Some(RequestBody::Chunked {
                content_type,
                bytes,
            }) => {
                let _ = write!(
                    description,
                    " <{} bytes of {content_type}, chunked>",
                    bytes.len()
                );
                // A reader of unknown length goes out with chunked encoding.
                let reader = reqwest::blocking::Body::new(std::io::Cursor::new(bytes));
                builder = builder.header("content-type", content_type).body(reader);
            }
        }
        let response = builder
            .send()
            .unwrap_or_else(|error| panic!("{description}: transport error: {error:?}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let text = response
            .text()
            .unwrap_or_else(|error| panic!("{description}: reading the body: {error}"));
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Response {
            status,
            content_type,
            retry_after,
            text,
            body,
            request: description,
        }
    }

    /// `GET` without credentials.
    #[track_caller]
    pub fn get(&self, path: &str) -> Response {
        self.request(Auth::None, "GET", path, None)
    }

    /// `POST` JSON without credentials.
    #[track_caller]
    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request(
            Auth::None,
            "POST",
            path,
            Some(RequestBody::Json(body.clone())),
        )
    }

    /// `GET` as admin.
    #[track_caller]
    pub fn admin_get(&self, path: &str) -> Response {
        self.request(Auth::Admin, "GET", path, None)
    }

    /// `POST` JSON as admin.
    #[track_caller]
    pub fn admin_post(&self, path: &str, body: &Value) -> Response {
        self.request(
            Auth::Admin,
            "POST",
            path,
            Some(RequestBody::Json(body.clone())),
        )
    }

    /// `PUT` JSON as admin.
    #[track_caller]
    pub fn admin_put(&self, path: &str, body: &Value) -> Response {
        self.request(
            Auth::Admin,
            "PUT",
            path,
            Some(RequestBody::Json(body.clone())),
        )
    }

    /// `DELETE` as admin.
    #[track_caller]
    pub fn admin_delete(&self, path: &str) -> Response {
        self.request(Auth::Admin, "DELETE", path, None)
    }

    /// Creates a policy; asserts 201 and returns the stored policy.
    #[track_caller]
    pub fn create_policy(&self, spec: &Value) -> Value {
        let response = self.admin_post("/v1/admin/policies", spec);
        response.assert_status(201);
        response.body
    }

    /// Mints a bootstrap token; asserts 201.
    #[track_caller]
    pub fn mint_token(&self, policy: &str, identity: &Value, max_uses: u32) -> MintedToken {
        let response = self.admin_post(
            "/v1/admin/tokens",
            &json!({"policy": policy, "identity": identity, "max_uses": max_uses}),
        );
        response.assert_status(201);
        let minted: MintedToken = response.json();
        self.minted
            .lock()
            .expect("minted tokens lock")
            .push(minted.token.clone());
        minted
    }

    /// `POST /v1/enroll {csr, token}`.
    #[track_caller]
    pub fn enroll(&self, csr_pem: &str, token: &str) -> Response {
        self.enroll_with(&json!({"csr": csr_pem, "token": token}))
    }

    /// Enrolls every `(csr, token)` at once, each from its own thread,
    /// released together by a barrier so the requests really overlap.
    pub fn enroll_in_parallel(&self, requests: &[(String, String)]) -> Vec<Response> {
        let barrier = std::sync::Barrier::new(requests.len());
        std::thread::scope(|scope| {
            let handles: Vec<_> = requests
                .iter()
                .map(|(csr, token)| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        self.enroll(csr, token)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("enrollment thread panicked"))
                .collect()
        })
    }

    /// `POST /v1/enroll` with any body; a 201's serial is remembered for
    /// [`TestServer::check_invariants`].
    #[track_caller]
    pub fn enroll_with(&self, body: &Value) -> Response {
        let response = self.post("/v1/enroll", body);
        if response.status == 201 {
            let serial = response
                .body
                .get("serial")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("201 without a serial: {}", response.text));
            self.received
                .lock()
                .expect("received serials lock")
                .push(serial.to_owned());
        }
        response
    }

    /// `GET /v1/admin/certificates/{serial}` as admin; asserts 200.
    #[track_caller]
    pub fn certificate(&self, serial: &str) -> CertificateInfo {
        let response = self.admin_get(&format!("/v1/admin/certificates/{serial}"));
        response.assert_status(200);
        response.json()
    }

    /// Every inventory entry matching `query` (e.g. `policy=x&status=issued`),
    /// following `next` cursors.
    #[track_caller]
    pub fn certificates(&self, query: &str) -> Vec<CertificateInfo> {
        self.collect_pages(&format!("/v1/admin/certificates?{query}"))
    }

    /// Every audit event, oldest first, following `next` cursors.
    #[track_caller]
    pub fn audit_events(&self) -> Vec<AuditEvent> {
        self.collect_pages("/v1/admin/audit?")
    }

    #[track_caller]
    fn collect_pages<T: DeserializeOwned>(&self, path_and_query: &str) -> Vec<T> {
        let separator = if path_and_query.ends_with('?') {
            ""
        } else {
            "&"
        };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let mut path = format!("{path_and_query}{separator}limit=500");
            if let Some(cursor) = &cursor {
                let _ = write!(path, "&cursor={}", url_encode(cursor));
            }
            let response = self.admin_get(&path);
            response.assert_status(200);
            let page: Page<T> = response.json();
            items.extend(page.items);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return items,
            }
        }
        panic!("{path_and_query}: more than 1000 pages; is the cursor stuck?");
    }

    /// Checks every certificate a client received so far: it is in the
    /// inventory, issued (or revoked by the test), with the same serial.
    #[track_caller]
    pub fn check_invariants(&self) {
        let serials: Vec<String> =
            std::mem::take(&mut *self.received.lock().expect("received serials lock"));
        for serial in serials {
            let info = self.certificate(&serial);
            assert_eq!(info.serial, serial, "inventory answered for another serial");
            assert!(
                matches!(
                    info.status,
                    CertificateStatus::Issued | CertificateStatus::Revoked
                ),
                "certificate {serial} was handed to a client but is {:?} in the inventory",
                info.status
            );
        }
    }

    // ---- server-host operations --------------------------------------------

    /// Runs `certmint-server init` again with the same arguments and returns
    /// its combined output (panics when it fails).
    #[track_caller]
    pub fn run_init_again(&self) -> String {
        let output = self
            .child_env()
            .command(&server_binary())
            .arg("init")
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run certmint-server init");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "second init failed ({}):\n{text}",
            output.status
        );
        text
    }

    /// `pkcs11-tool --list-objects --type privkey` on this server's token.
    #[track_caller]
    pub fn list_private_keys(&self) -> String {
        list_private_keys(&self.child_env(), &self.module, &self.hsm_pin)
    }

    /// The PKCS#11 token this server's CA lives in.
    pub fn token(&self) -> Token {
        self.options.token
    }

    /// Runs the `hsm-sim` CLI (`status`, `fault set …`, `fault remove-device`,
    /// …) on this server's hsm-sim directory; the server's module sees the
    /// change on its next PKCS#11 call. Panics if this server is not on
    /// hsm-sim.
    #[track_caller]
    pub fn hsm_sim(&self, args: &[&str]) -> CommandOutput {
        assert_eq!(self.options.token, Token::HsmSim, "not an hsm-sim server");
        let mut command = self.child_env().command(&hsm_sim_binary());
        command.args(args);
        CommandOutput::of(&mut command, &format!("hsm-sim {}", args.join(" ")))
    }

    /// Mints an admin JWT with `certmint-server admin-token`.
    #[track_caller]
    pub fn admin_token_for(&self, role: &str) -> String {
        mint_admin_token(&server_binary(), &self.child_env(), &self.config_path, role)
    }

    /// Re-signs `token` with the server's own token key (it lives on the
    /// server host, which the test owns) after `edit` changed its claims.
    /// The header is kept byte for byte.
    #[track_caller]
    pub fn resign_with_server_key(&self, token: &str, edit: impl FnOnce(&mut Value)) -> String {
        let (header, mut claims) = jwt_segments(token);
        edit(&mut claims);
        let signing_input = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
        let key_file = self.dir.join("token-signing-key.pem");
        let signature = if key_file.exists() {
            let pem = std::fs::read_to_string(&key_file).expect("read token-signing-key.pem");
            let (label, pkcs8) = der::pem::decode_vec(pem.as_bytes()).expect("token key is PEM");
            assert_eq!(label, "PRIVATE KEY");
            let key = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
                .expect("token key is PKCS#8 Ed25519");
            b64url(key.sign(signing_input.as_bytes()).as_ref())
        } else {
            self.sign_with_hsm_token_key(signing_input.as_bytes())
        };
        format!("{signing_input}.{signature}")
    }

    /// Signs `message` with the server's token key on the HSM (the
    /// default, `tokens.signing_key = "hsm"`), through `certmint-bench
    /// sign-ed25519` in a process of its own: a PKCS#11 module reads its
    /// token directory once per process, and each test server has its own.
    fn sign_with_hsm_token_key(&self, message: &[u8]) -> String {
        self.hsm_token_key(&[], message)
    }

    /// The raw Ed25519 public key that verifies this server's tokens.
    pub fn token_signing_public_key(&self) -> Vec<u8> {
        let key_file = self.dir.join("token-signing-key.pem");
        if key_file.exists() {
            let pem = std::fs::read_to_string(&key_file).expect("read token-signing-key.pem");
            let (_, pkcs8) = der::pem::decode_vec(pem.as_bytes()).expect("token key is PEM");
            let key = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
                .expect("token key is PKCS#8 Ed25519");
            return ring::signature::KeyPair::public_key(&key).as_ref().to_vec();
        }
        let encoded = self.hsm_token_key(&["--public-key"], &[]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .expect("base64url public key")
    }

    /// `certmint-bench sign-ed25519 <extra>` on the server's token key,
    /// with `input` on stdin; its output line.
    fn hsm_token_key(&self, extra: &[&str], input: &[u8]) -> String {
        use std::io::Write as _;
        let config = std::fs::read_to_string(&self.config_path).expect("read the config");
        let token_label = config
            .lines()
            .find_map(|line| line.trim().strip_prefix("token_label = "))
            .map(|value| value.trim().trim_matches('"').to_owned())
            .expect("token_label in the config");
        let mut child = self
            .child_env()
            .command(&built_artifact("certmint-bench"))
            .arg("sign-ed25519")
            .arg("--pkcs11-module")
            .arg(&self.module)
            .args(["--token-label", &token_label])
            .args(["--key-label", TOKEN_SIGNING_KEY_LABEL])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run certmint-bench sign-ed25519");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write the signing input");
        let output = child.wait_with_output().expect("wait for certmint-bench");
        assert!(
            output.status.success(),
            "certmint-bench sign-ed25519 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("base64url")
            .trim()
            .to_owned()
    }

    fn child_env(&self) -> ChildEnv {
        ChildEnv {
            softhsm_conf: self.softhsm_conf.clone(),
            hsm_pin: self.hsm_pin.clone(),
        }
    }
}

// ---- server set-up ------------------------------------------------------------

/// The PKCS#11 token a test server's CA lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// hsm-sim (`libhsm_sim.so` from this workspace): the zero-install
    /// default, and the one whose faults tests can inject.
    HsmSim,
    /// SoftHSM2, the reference token (`apt-get install softhsm2`).
    SoftHsm2,
}

impl Token {
    /// `CERTMINT_TEST_TOKEN`: `hsm-sim` (default) or `softhsm2`. The README's
    /// test command runs the end-to-end suites once with each.
    pub fn from_env() -> Token {
        match std::env::var("CERTMINT_TEST_TOKEN").as_deref() {
            Ok("softhsm2") => Token::SoftHsm2,
            Ok("hsm-sim") | Err(_) => Token::HsmSim,
            Ok(other) => panic!("CERTMINT_TEST_TOKEN={other:?}: expected hsm-sim or softhsm2"),
        }
    }
}

/// How [`ServerBuilder`] sets a server up. The default is what
/// [`TestServer::start`] does: an ec-p256 CA created by `init` on the token
/// `CERTMINT_TEST_TOKEN` names, text logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// The PKCS#11 token.
    pub token: Token,
    /// `init --key-type`: `ec-p256`, `ec-p384`, `rsa-3072`, `rsa-4096` or `ed25519`.
    pub key_type: String,
    /// `serve --log-format json` instead of text.
    pub log_format_json: bool,
    /// `init --external-root-csr`, with the test acting as the offline root
    /// and installing the chain with `ca import-chain`.
    pub external_root: bool,
    /// `[server] tls_certificate_ttl`, written into the config after `init`
    /// (short values make the server renew its own certificate during a test).
    pub tls_certificate_ttl: Option<String>,
    /// `hsm-sim fault set` arguments in force during a first `init`, which
    /// must fail; the faults are then cleared and `init` runs again, as an
    /// operator would after an interrupted set-up. The first run's output
    /// is kept in `init-interrupted.log`. hsm-sim only.
    pub interrupt_first_init: Vec<String>,
    /// How many `init`s run at the same moment (replicas that each run
    /// `init` at start); every one must succeed.
    pub concurrent_inits: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            token: Token::from_env(),
            key_type: "ec-p256".to_owned(),
            log_format_json: false,
            external_root: false,
            tls_certificate_ttl: None,
            interrupt_first_init: Vec::new(),
            concurrent_inits: 1,
        }
    }
}

impl ServerOptions {
    /// The PKCS#11 token.
    pub fn token(mut self, token: Token) -> Self {
        self.token = token;
        self
    }

    /// The CA key type.
    pub fn key_type(mut self, key_type: &str) -> Self {
        key_type.clone_into(&mut self.key_type);
        self
    }

    /// Lifetime of the server's own HTTPS certificate, e.g. `"12s"`.
    pub fn tls_certificate_ttl(mut self, ttl: &str) -> Self {
        self.tls_certificate_ttl = Some(ttl.to_owned());
        self
    }

    /// JSON log lines.
    pub fn log_format_json(mut self) -> Self {
        self.log_format_json = true;
        self
    }

    /// External-root mode (or not).
    pub fn external_root(mut self, external_root: bool) -> Self {
        self.external_root = external_root;
        self
    }

    /// `count` `init`s at the same moment (see
    /// [`ServerOptions::concurrent_inits`]).
    pub fn concurrent_inits(mut self, count: usize) -> Self {
        self.concurrent_inits = count.max(1);
        self
    }

    /// A first `init` that fails under these hsm-sim faults, then a rerun
    /// (see [`ServerOptions::interrupt_first_init`]).
    pub fn interrupt_first_init(mut self, fault_args: &[&str]) -> Self {
        self.interrupt_first_init = fault_args.iter().map(|arg| (*arg).to_owned()).collect();
        self
    }
}

/// Builds a [`TestServer`] with [`ServerOptions`]; see [`TestServer::builder`].
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    backend: Backend,
    options: ServerOptions,
}

impl ServerBuilder {
    /// The PKCS#11 token (default: `CERTMINT_TEST_TOKEN`).
    pub fn token(mut self, token: Token) -> Self {
        self.options = self.options.token(token);
        self
    }

    /// The CA key type (default `ec-p256`).
    pub fn key_type(mut self, key_type: &str) -> Self {
        self.options = self.options.key_type(key_type);
        self
    }

    /// `serve --log-format json`.
    pub fn log_format_json(mut self) -> Self {
        self.options = self.options.log_format_json();
        self
    }

    /// External-root mode: `init --external-root-csr`, an offline root made
    /// with `openssl` signs the CSR, `ca import-chain` installs the chain.
    pub fn external_root(mut self, external_root: bool) -> Self {
        self.options = self.options.external_root(external_root);
        self
    }

    /// All options at once.
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// Starts the server; `None` (after printing why) when a non-mandatory
    /// dependency is missing. Panics, with the output, on any other failure.
    pub fn start(self) -> Option<TestServer> {
        let backend = self.backend;
        match self.try_start() {
            Ok(server) => Some(server),
            Err(Skip(reason)) => {
                eprintln!("note: skipping {backend:?} end-to-end test: {reason}");
                None
            }
        }
    }

    /// [`ServerBuilder::start`], returning why it skipped.
    pub fn try_start(self) -> Result<TestServer, Skip> {
        if self.options.external_root {
            return Ok(self.try_init_external_root()?.complete());
        }
        let prepared = Prepared::new(self.backend, self.options)?;
        prepared.run_interrupted_init(None);
        let init = prepared.init_concurrently();
        assert!(
            init.success(),
            "certmint-server init failed in {}:\n{}",
            prepared.dir.display(),
            init.text
        );
        let root_fingerprint = parse_root_fingerprint(&init.text).unwrap_or_else(|| {
            panic!(
                "init printed no `root fingerprint: sha256:<hex>` line:\n{}",
                init.text
            )
        });
        Ok(TestServer::launch(prepared, root_fingerprint, None))
    }

    /// External-root mode up to the pending CA: runs `init
    /// --external-root-csr` and stops there, so the test can play the
    /// offline root (or fail to). `None` when skipped.
    pub fn init_external_root(self) -> Option<PendingCa> {
        let backend = self.backend;
        match self.try_init_external_root() {
            Ok(pending) => Some(pending),
            Err(Skip(reason)) => {
                eprintln!("note: skipping {backend:?} end-to-end test: {reason}");
                None
            }
        }
    }

    fn try_init_external_root(self) -> Result<PendingCa, Skip> {
        let prepared = Prepared::new(self.backend, self.options.external_root(true))?;
        let csr_path = prepared.dir.join("issuing.csr");
        prepared.run_interrupted_init(Some(&csr_path));
        let init = prepared.init(Some(&csr_path));
        assert!(
            init.success(),
            "certmint-server init --external-root-csr failed in {}:\n{}",
            prepared.dir.display(),
            init.text
        );
        let csr_pem = std::fs::read_to_string(&csr_path).unwrap_or_else(|error| {
            panic!(
                "init --external-root-csr wrote no {} ({error}):\n{}",
                csr_path.display(),
                init.text
            )
        });
        Ok(PendingCa {
            prepared,
            init_output: init.text,
            csr_pem,
        })
    }
}

/// Everything a server needs before `serve`: directory, token, database.
/// Dropping it (before [`TestServer::launch`] hands both to the supervisor)
/// removes the directory and drops the database.
struct Prepared {
    backend: Backend,
    options: ServerOptions,
    binary: PathBuf,
    module: PathBuf,
    database: Option<PostgresDatabase>,
    dir: PathBuf,
    softhsm_conf: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    port: u16,
    hsm_pin: String,
    so_pin: String,
    /// False once the supervisor owns the directory and the database.
    clean_up: bool,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.clean_up {
            drop_postgres_database(self.database.as_ref());
            if !env_flag("CERTMINT_E2E_KEEP") {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}

impl Prepared {
    fn new(backend: Backend, options: ServerOptions) -> Result<Prepared, Skip> {
        install_crypto_provider();
        let binary = server_binary();
        let module = match options.token {
            Token::HsmSim => hsm_sim_module(),
            Token::SoftHsm2 => {
                let module = std::env::var_os("CERTMINT_TEST_PKCS11_MODULE")
                    .map_or_else(|| PathBuf::from(SOFTHSM_MODULE), PathBuf::from);
                if !module.exists() {
                    let reason = format!(
                        "SoftHSM2 module {} not found (apt-get install softhsm2)",
                        module.display()
                    );
                    if env_flag("CERTMINT_REQUIRE_SOFTHSM") {
                        panic!("{reason}, and CERTMINT_REQUIRE_SOFTHSM=1");
                    }
                    return Err(Skip(reason));
                }
                module
            }
        };
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(create_postgres_database()?),
        };
        let dir = tempfile::Builder::new()
            .prefix("certmint-e2e-")
            .tempdir()
            .expect("create a temporary directory")
            .keep();
        // From here on, dropping `prepared` cleans up.
        let prepared = Prepared {
            backend,
            options,
            binary,
            module,
            database,
            softhsm_conf: dir.join("softhsm2.conf"),
            config_path: dir.join("certmint.toml"),
            log_path: dir.join("server.log"),
            dir,
            port: free_port(),
            hsm_pin: random_hex(8),
            so_pin: random_hex(8),
            clean_up: true,
        };
        let token_dir = prepared.dir.join("softhsm-tokens");
        std::fs::create_dir(&token_dir).expect("create the token directory");
        std::fs::create_dir(prepared.child_env().hsm_sim_dir())
            .expect("create the hsm-sim directory");
        std::fs::write(
            &prepared.softhsm_conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                token_dir.display()
            ),
        )
        .expect("write softhsm2.conf");
        Ok(prepared)
    }

    fn child_env(&self) -> ChildEnv {
        ChildEnv {
            softhsm_conf: self.softhsm_conf.clone(),
            hsm_pin: self.hsm_pin.clone(),
        }
    }

    /// The failing first `init` of [`ServerOptions::interrupt_first_init`],
    /// if asked for; leaves no fault in force.
    fn run_interrupted_init(&self, external_csr: Option<&Path>) {
        if self.options.interrupt_first_init.is_empty() {
            return;
        }
        assert_eq!(self.options.token, Token::HsmSim, "faults need hsm-sim");
        let hsm_sim = |args: &[&str]| {
            let mut command = self.child_env().command(&hsm_sim_binary());
            command.args(args);
            let output = CommandOutput::of(&mut command, &format!("hsm-sim {}", args.join(" ")));
            assert!(
                output.success(),
                "hsm-sim {args:?} failed:\n{}",
                output.text
            );
        };
        let mut set = vec!["fault", "set"];
        set.extend(self.options.interrupt_first_init.iter().map(String::as_str));
        hsm_sim(&set);
        let init = self.init(external_csr);
        hsm_sim(&["fault", "clear"]);
        std::fs::write(self.dir.join("init-interrupted.log"), &init.text)
            .expect("write init-interrupted.log");
        assert!(
            init.failed(),
            "init under hsm-sim faults {:?} did not fail:\n{}",
            self.options.interrupt_first_init,
            init.text
        );
    }

    /// [`ServerOptions::concurrent_inits`] `init`s at once; asserts each
    /// one succeeded and returns the output of one that reports the root.
    fn init_concurrently(&self) -> CommandOutput {
        let count = self.options.concurrent_inits;
        if count <= 1 {
            return self.init(None);
        }
        let outputs: Vec<CommandOutput> = std::thread::scope(|scope| {
            let runs: Vec<_> = (0..count)
                .map(|_| scope.spawn(|| self.init(None)))
                .collect();
            runs.into_iter()
                .map(|run| run.join().expect("init thread"))
                .collect()
        });
        for output in &outputs {
            assert!(
                output.success(),
                "one of {count} concurrent inits failed in {}:\n{}",
                self.dir.display(),
                output.text
            );
        }
        let created = outputs
            .iter()
            .filter(|output| output.text.contains("created CA"))
            .count();
        assert_eq!(
            created, 1,
            "exactly one of {count} concurrent inits creates the CA"
        );
        outputs
            .into_iter()
            .find(|output| output.text.contains("root fingerprint"))
            .expect("an init reported the root")
    }

    /// The first `init` (it also initialises the token); `external_csr`
    /// selects external-root mode. Output is also kept in `init.log`.
    fn init(&self, external_csr: Option<&Path>) -> CommandOutput {
        let token_label = format!("e2e-{}", random_hex(4));
        let database_url = match &self.database {
            None => format!("sqlite://{}", self.dir.join("certmint.db").display()),
            Some(database) => database.url.clone(),
        };
        let mut command = self.child_env().command(&self.binary);
        command
            .env("CERTMINT_HSM_SO_PIN", &self.so_pin)
            .arg("init")
            .arg("--config")
            .arg(&self.config_path)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--name", "localhost", "--name", "127.0.0.1"])
            .arg("--pkcs11-module")
            .arg(&self.module)
            .args(["--token-label", &token_label])
            .args(["--ca-name", "certmint e2e"])
            .args(["--key-type", &self.options.key_type, "--init-token"]);
        // PostgreSQL URLs (which may hold a password) come through the
        // environment, as the README advises; SQLite paths as a flag. Both
        // ways are exercised on every run.
        match &self.database {
            None => command.args(["--database-url", &database_url]),
            Some(_) => command.env("CERTMINT_DATABASE_URL", &database_url),
        };
        if let Some(csr) = external_csr {
            command.arg("--external-root-csr").arg(csr);
        }
        let output = CommandOutput::of(&mut command, "certmint-server init");
        std::fs::write(self.dir.join("init.log"), &output.text).expect("write init.log");
        if let Ok(metadata) = std::fs::metadata(&self.config_path) {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                metadata.permissions().mode() & 0o777,
                0o600,
                "init must write its config 0600: database.url may hold a password"
            );
        }
        if let Some(ttl) = &self.options.tls_certificate_ttl {
            let config = std::fs::read_to_string(&self.config_path).expect("read config");
            let edited = config.replacen(
                "[server]\n",
                &format!("[server]\ntls_certificate_ttl = \"{ttl}\"\n"),
                1,
            );
            std::fs::write(&self.config_path, edited).expect("write config");
        }
        output
    }
}

/// A finished command: exit status (`None` when it had to be killed) and
/// its stdout followed by its stderr.
#[derive(Debug)]
pub struct CommandOutput {
    /// How it exited; `None` when it was still running at its deadline.
    pub status: Option<std::process::ExitStatus>,
    /// stdout, then stderr.
    pub text: String,
}

impl CommandOutput {
    fn of(command: &mut Command, what: &str) -> CommandOutput {
        let output = command
            .output()
            .unwrap_or_else(|error| panic!("run {what}: {error}"));
        CommandOutput {
            status: Some(output.status),
            text: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    /// Exited (within its deadline) with a non-zero status.
    pub fn failed(&self) -> bool {
        self.status.is_some_and(|status| !status.success())
    }
}

/// An external-root CA after `init --external-root-csr`: the issuing key is
/// on the token, its CSR awaits an offline root. Dropping it removes the
/// directory and the database.
pub struct PendingCa {
    prepared: Prepared,
    init_output: String,
    csr_pem: String,
}

impl std::fmt::Debug for PendingCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCa")
            .field("backend", &self.prepared.backend)
            .field("dir", &self.prepared.dir)
            .finish_non_exhaustive()
    }
}

impl PendingCa {
    /// The back end.
    pub fn backend(&self) -> Backend {
        self.prepared.backend
    }

    /// The server directory (config beside it).
    pub fn dir(&self) -> &Path {
        &self.prepared.dir
    }

    /// What the first `init` printed.
    pub fn init_output(&self) -> &str {
        &self.init_output
    }

    /// The issuing CA's CSR written by the first `init`.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// Runs `init --config … --external-root-csr <new file>` again; returns
    /// its output and the CSR it wrote (`None` when it wrote none).
    pub fn init_again(&self) -> (CommandOutput, Option<String>) {
        let csr_path = self.dir().join(format!("issuing-{}.csr", random_hex(3)));
        let output = self.init_again_writing_to(&csr_path);
        (output, std::fs::read_to_string(&csr_path).ok())
    }

    /// Runs `init` again with `--external-root-csr <csr_path>`.
    pub fn init_again_writing_to(&self, csr_path: &Path) -> CommandOutput {
        CommandOutput::of(
            self.prepared
                .child_env()
                .command(&self.prepared.binary)
                .arg("init")
                .arg("--config")
                .arg(&self.prepared.config_path)
                .arg("--external-root-csr")
                .arg(csr_path),
            "certmint-server init",
        )
    }

    /// `certmint-server ca import-chain --config … --chain <chain_pem in a file>`.
    pub fn import_chain(&self, chain_pem: &str) -> CommandOutput {
        let chain_path = self.dir().join(format!("chain-{}.pem", random_hex(3)));
        std::fs::write(&chain_path, chain_pem).expect("write the chain file");
        CommandOutput::of(
            self.prepared
                .child_env()
                .command(&self.prepared.binary)
                .args(["ca", "import-chain", "--config"])
                .arg(&self.prepared.config_path)
                .arg("--chain")
                .arg(&chain_path),
            "certmint-server ca import-chain",
        )
    }

    /// Runs `certmint-server serve` directly, expecting it to refuse: waits
    /// up to 30 s for it to exit; if it is still running then, kills it and
    /// returns `status: None`.
    pub fn try_serve(&self) -> CommandOutput {
        let log_path = self.dir().join(format!("serve-{}.log", random_hex(3)));
        let log = std::fs::File::create(&log_path).expect("create the serve log");
        let mut child = self
            .prepared
            .child_env()
            .command(&self.prepared.binary)
            .arg("serve")
            .arg("--config")
            .arg(&self.prepared.config_path)
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn certmint-server serve");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for serve") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        CommandOutput {
            status,
            text: read_from(&log_path, 0),
        }
    }

    /// Runs `sql` on this CA's PostgreSQL database (`psql -At`) and
    /// returns its output; `None` on SQLite, which the harness does not
    /// read behind the server's back.
    pub fn postgres_query(&self, sql: &str) -> Option<String> {
        let database = self.prepared.database.as_ref()?;
        let output = Command::new("psql")
            .arg(&database.url)
            .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// `pkcs11-tool --list-objects --type privkey` on this CA's token.
    pub fn list_private_keys(&self) -> String {
        list_private_keys(
            &self.prepared.child_env(),
            &self.prepared.module,
            &self.prepared.hsm_pin,
        )
    }

    /// Plays a fresh offline root: signs the CSR, imports the chain (asserts
    /// success) and starts `serve`.
    pub fn complete(self) -> TestServer {
        let root = OfflineRoot::new();
        self.complete_with(&root)
    }

    /// [`PendingCa::complete`] with a given offline root.
    pub fn complete_with(self, root: &OfflineRoot) -> TestServer {
        let chain = root.chain_for(&self.csr_pem);
        let import = self.import_chain(&chain);
        assert!(
            import.success(),
            "ca import-chain failed in {}:\n{}",
            self.dir().display(),
            import.text
        );
        // `chain installed; root fingerprint: sha256:<hex>`
        let root_fingerprint = import
            .text
            .lines()
            .find_map(|line| {
                let at = line.find("root fingerprint: ")?;
                parse_root_fingerprint(&line[at..])
            })
            .unwrap_or_else(|| {
                panic!(
                    "import-chain printed no `root fingerprint: sha256:<hex>`:\n{}",
                    import.text
                )
            });
        TestServer::launch(
            self.prepared,
            root_fingerprint,
            Some(root.certificate_pem().to_owned()),
        )
    }
}

/// An offline root CA played by `openssl` in a temporary directory: a
/// self-signed P-256 certificate, CA:TRUE, keyCertSign and cRLSign.
#[derive(Debug)]
pub struct OfflineRoot {
    dir: tempfile::TempDir,
    certificate_pem: String,
    /// An intermediate CA the root signed, which then signs issuing CSRs
    /// ([`OfflineRoot::with_intermediate`]).
    intermediate_pem: Option<String>,
}

impl Default for OfflineRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl OfflineRoot {
    /// Creates the root (`openssl req -x509`).
    pub fn new() -> OfflineRoot {
        let dir = tempfile::tempdir().expect("temporary directory");
        let output = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
            .args(["-subj", "/CN=Offline Root", "-days", "3650"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(dir.path().join("root.key"))
            .arg("-out")
            .arg(dir.path().join("root.pem"))
            .stdin(Stdio::null())
            .output()
            .expect("run openssl req -x509");
        assert!(
            output.status.success(),
            "openssl req -x509 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let certificate_pem =
            std::fs::read_to_string(dir.path().join("root.pem")).expect("read the offline root");
        OfflineRoot {
            dir,
            certificate_pem,
            intermediate_pem: None,
        }
    }

    /// A root and an intermediate CA it signed (CA:TRUE, pathlen 1), the
    /// common offline hierarchy: the intermediate signs the issuing CSR,
    /// and the chain runs issuing, intermediate, root.
    pub fn with_intermediate() -> OfflineRoot {
        OfflineRoot::with_intermediate_extensions(
            "basicConstraints=critical,CA:TRUE,pathlen:1\n\
             keyUsage=critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid\n",
        )
    }

    /// [`OfflineRoot::with_intermediate`], with the intermediate CA's
    /// `openssl x509 -extfile` extensions given (to make a faulty one).
    pub fn with_intermediate_extensions(extensions_text: &str) -> OfflineRoot {
        let mut root = OfflineRoot::new();
        let key = root.dir.path().join("intermediate.key");
        let csr = root.dir.path().join("intermediate.csr");
        let output = Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
            .args(["-subj", "/CN=Offline Intermediate"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl req -new");
        assert!(
            output.status.success(),
            "openssl req -new failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let csr_pem = std::fs::read_to_string(&csr).expect("read the intermediate CSR");
        let intermediate_pem = root.sign_as("root", &csr_pem, extensions_text);
        std::fs::write(root.dir.path().join("intermediate.pem"), &intermediate_pem)
            .expect("write the intermediate certificate");
        root.intermediate_pem = Some(intermediate_pem);
        root
    }

    /// The intermediate CA's certificate, PEM, if there is one.
    pub fn intermediate_pem(&self) -> Option<&str> {
        self.intermediate_pem.as_deref()
    }

    /// The root certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Signs `csr_pem` as an issuing CA (`openssl x509 -req`: CA:TRUE,
    /// pathlen 0, keyCertSign, cRLSign, digitalSignature, SKI, AKI);
    /// returns the certificate, PEM.
    pub fn sign_issuing_csr(&self, csr_pem: &str) -> String {
        self.sign_csr_with(
            csr_pem,
            "basicConstraints=critical,CA:TRUE,pathlen:0\n\
             keyUsage=critical,keyCertSign,cRLSign,digitalSignature\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid\n",
        )
    }

    /// Signs `csr_pem` with the given `openssl x509 -extfile` extensions,
    /// as the intermediate CA if there is one, else the root; returns the
    /// certificate, PEM.
    pub fn sign_csr_with(&self, csr_pem: &str, extensions_text: &str) -> String {
        let signer = if self.intermediate_pem.is_some() {
            "intermediate"
        } else {
            "root"
        };
        self.sign_as(signer, csr_pem, extensions_text)
    }

    /// Signs `csr_pem` with `<signer>.pem` and `<signer>.key`.
    fn sign_as(&self, signer: &str, csr_pem: &str, extensions_text: &str) -> String {
        let name = random_hex(4);
        let csr = self.dir.path().join(format!("{name}.csr"));
        let extensions = self.dir.path().join(format!("{name}.ext"));
        let certificate = self.dir.path().join(format!("{name}.pem"));
        std::fs::write(&csr, csr_pem).expect("write the CSR");
        std::fs::write(&extensions, extensions_text).expect("write the extensions file");
        let output = Command::new("openssl")
            .args(["x509", "-req", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(self.dir.path().join(format!("{signer}.pem")))
            .arg("-CAkey")
            .arg(self.dir.path().join(format!("{signer}.key")))
            .arg("-CAserial")
            .arg(self.dir.path().join(format!("{signer}.srl")))
            .args(["-CAcreateserial", "-days", "365", "-extfile"])
            .arg(&extensions)
            .arg("-out")
            .arg(&certificate)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl x509 -req");
        assert!(
            output.status.success(),
            "openssl x509 -req failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read_to_string(&certificate).expect("read the issuing certificate")
    }

    /// `chain.pem` for `ca import-chain`: the signed issuing certificate
    /// first, then the intermediate CA if any, this root last.
    pub fn chain_for(&self, csr_pem: &str) -> String {
        format!(
            "{}{}{}",
            self.sign_issuing_csr(csr_pem),
            self.intermediate_pem.as_deref().unwrap_or_default(),
            self.certificate_pem
        )
    }
}

/// The label `init` gives the token-signing key on the HSM.
pub const TOKEN_SIGNING_KEY_LABEL: &str = "certmint-token-signing";

/// The labels of the private keys in a [`TestServer::list_private_keys`]
/// listing, sorted.
pub fn private_key_labels(listing: &str) -> Vec<String> {
    let mut labels: Vec<String> = listing
        .split("Private Key Object")
        .skip(1)
        .filter_map(|object| {
            object
                .lines()
                .find_map(|line| line.trim().strip_prefix("label:"))
                .map(|label| label.trim().to_owned())
        })
        .collect();
    labels.sort();
    labels
}

/// `pkcs11-tool --list-objects --type privkey` on a token.
fn list_private_keys(env: &ChildEnv, module: &Path, pin: &str) -> String {
    let output = env
        .command(Path::new("pkcs11-tool"))
        .arg("--module")
        .arg(module)
        .args(["--login", "--pin", pin])
        .args(["--list-objects", "--type", "privkey"])
        .output()
        .expect("run pkcs11-tool (apt-get install opensc)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "pkcs11-tool failed:\n{text}");
    text
}

/// The harness's check on every response: never a 500, and every error is a
/// problem document with a `code`.
#[track_caller]
pub fn assert_well_formed(response: &Response) {
    assert_ne!(
        response.status, 500,
        "{}: the server answered 500: {}",
        response.request, response.text
    );
    if response.status >= 400 {
        assert!(
            response
                .content_type
                .starts_with("application/problem+json")
                && !response.code().is_empty(),
            "{}: error {} is not a problem document with a code: {:?} {}",
            response.request,
            response.status,
            response.content_type,
            response.text
        );
    }
}

/// A request body.
#[derive(Clone, Debug)]
pub enum RequestBody {
    /// Serialised JSON.
    Json(Value),
    /// Raw bytes with a content type.
    Raw {
        /// `Content-Type`.
        content_type: String,
        /// Body.
        bytes: Vec<u8>,
    },
    /// Raw bytes sent with `Transfer-Encoding: chunked` (no `Content-Length`).
    Chunked {
        /// `Content-Type`.
        content_type: String,
        /// Body.
        bytes: Vec<u8>,
    },
}

/// Runs `body` against the shared server of `backend` (or skips), printing
/// the server's log lines from the test's run when it fails, then checks
/// [`TestServer::check_invariants`]. Used by [`backend_tests!`].
pub fn run_test(backend: Backend, name: &str, body: impl FnOnce(&TestServer)) {
    run_test_on(TestServer::shared(backend), name, body);
}

/// The server a test binary shares for `backend`, started with `options`
/// on first use and kept in `cell`; `None` (after printing why) when a
/// non-mandatory dependency is missing. Used by [`backend_tests!`]'s
/// `options = …;` form.
pub fn shared_with_options(
    cell: &'static OnceLock<Result<TestServer, Skip>>,
    backend: Backend,
    options: impl FnOnce() -> ServerOptions,
) -> Option<&'static TestServer> {
    match cell.get_or_init(|| TestServer::builder(backend).options(options()).try_start()) {
        Ok(server) => Some(server),
        Err(Skip(reason)) => {
            eprintln!("note: skipping {backend:?} end-to-end test: {reason}");
            None
        }
    }
}

/// [`run_test`] on a given server (`None`: skipped).
pub fn run_test_on(server: Option<&TestServer>, name: &str, body: impl FnOnce(&TestServer)) {
    let Some(server) = server else {
        return;
    };
    let backend = server.backend;
    let offset = server.log_len();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        body(server);
        server.check_invariants();
    }));
    if let Err(panic) = outcome {
        eprintln!(
            "---- {name} ({backend:?}) failed; server log since the test started ({}):\n{}\n---- end of server log",
            server.log_path.display(),
            server.log_since(offset)
        );
        std::panic::resume_unwind(panic);
    }
}

/// Instantiates each test body once per back end, rustls-style: `fn x` becomes
/// `sqlite::x` and `postgres::x`, both running the same body on that back end.
///
/// Three forms, one per invocation (each defines `mod sqlite` and `mod postgres`):
///
/// ```ignore
/// // The binary's shared default server of each back end.
/// backend_tests! {
///     fn ok_something(server: &TestServer) { ... }
/// }
/// // A server shared by this invocation's tests, started with options.
/// backend_tests! {
///     options = ServerOptions::default().log_format_json();
///     fn ok_something(server: &TestServer) { ... }
/// }
/// // The body starts its own servers (e.g. with `TestServer::builder(backend)`).
/// backend_tests! {
///     fn ok_something(backend: Backend) { ... }
/// }
/// ```
#[macro_export]
macro_rules! backend_tests {
    (options = $options:expr; $($(#[$meta:meta])* fn $name:ident($server:ident: &TestServer) $body:block)*) => {
        $crate::backend_tests!(@shared_with_options sqlite, Sqlite, $options, $($(#[$meta])* fn $name($server) $body)*);
        $crate::backend_tests!(@shared_with_options postgres, Postgres, $options, $($(#[$meta])* fn $name($server) $body)*);
    };
    (@shared_with_options $module:ident, $backend:ident, $options:expr, $($(#[$meta:meta])* fn $name:ident($server:ident) $body:block)*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            fn shared_server() -> Option<&'static $crate::TestServer> {
                static SERVER: std::sync::OnceLock<Result<$crate::TestServer, $crate::Skip>> =
                    std::sync::OnceLock::new();
                $crate::shared_with_options(&SERVER, $crate::Backend::$backend, || $options)
            }
            $(
                $(#[$meta])*
                #[test]
                fn $name() {
                    $crate::run_test_on(
                        shared_server(),
                        stringify!($name),
                        |$server: &$crate::TestServer| $body,
                    );
                }
            )*
        }
    };
    ($($(#[$meta:meta])* fn $name:ident($backend:ident: Backend) $body:block)*) => {
        $crate::backend_tests!(@own_server sqlite, Sqlite, $($(#[$meta])* fn $name($backend) $body)*);
        $crate::backend_tests!(@own_server postgres, Postgres, $($(#[$meta])* fn $name($backend) $body)*);
    };
    (@own_server $module:ident, $variant:ident, $($(#[$meta:meta])* fn $name:ident($backend:ident) $body:block)*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                #[test]
                fn $name() {
                    let $backend: $crate::Backend = $crate::Backend::$variant;
                    $body
                }
            )*
        }
    };
    ($($(#[$meta:meta])* fn $name:ident($server:ident: &TestServer) $body:block)*) => {
        $crate::backend_tests!(@shared sqlite, Sqlite, $($(#[$meta])* fn $name($server) $body)*);
        $crate::backend_tests!(@shared postgres, Postgres, $($(#[$meta])* fn $name($server) $body)*);
    };
    (@shared $module:ident, $variant:ident, $($(#[$meta:meta])* fn $name:ident($server:ident) $body:block)*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                #[test]
                fn $name() {
                    $crate::run_test(
                        $crate::Backend::$variant,
                        stringify!($name),
                        |$server: &$crate::TestServer| $body,
                    );
                }
            )*
        }
    };
}

// ---- policies, identities ---------------------------------------------------

/// A policy JSON with sensible defaults: ec-p256 only, 24h/72h, client_auth.
pub fn policy_json(name: &str, dns: &[&str], ip: &[&str], uri: &[&str]) -> Value {
    json!({
        "name": name,
        "description": "end-to-end test policy",
        "allowed": {"dns": dns, "ip": ip, "uri": uri},
        "key_types": ["ec-p256"],
        "ttl": {"default": "24h", "max": "72h"},
        "extended_key_usage": ["client_auth"],
        "renewal": {"allowed": true, "max_chain_age": "90d"},
        "allow_wildcard_certificates": false,
        "enabled": true
    })
}

/// An identity JSON.
pub fn identity(dns: &[&str], ip: &[&str], uri: &[&str]) -> Value {
    json!({"dns": dns, "ip": ip, "uri": uri})
}

// ---- CSRs -------------------------------------------------------------------

/// Makes a CSR for `key_type` (`ec-p256`, `ec-p384`, `ed25519`, `rsa-<bits>`)
/// naming exactly the given SANs; returns `(csr_pem, key_pem)`.
pub fn make_csr(key_type: &str, dns: &[&str], ip: &[&str], uri: &[&str]) -> (String, String) {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans(dns, ip, uri);
    make_csr_from(key_type, params)
}

/// The SAN list for rcgen; panics on names rcgen cannot encode.
pub fn sans(dns: &[&str], ip: &[&str], uri: &[&str]) -> Vec<rcgen::SanType> {
    let mut names = Vec::new();
    for name in dns {
        let ia5 = rcgen::string::Ia5String::try_from(*name)
            .unwrap_or_else(|error| panic!("rcgen cannot encode dNSName {name:?}: {error}"));
        names.push(rcgen::SanType::DnsName(ia5));
    }
    for address in ip {
        names.push(rcgen::SanType::IpAddress(
            address.parse().expect("a valid IP address"),
        ));
    }
    for name in uri {
        let ia5 = rcgen::string::Ia5String::try_from(*name)
            .unwrap_or_else(|error| panic!("rcgen cannot encode URI {name:?}: {error}"));
        names.push(rcgen::SanType::URI(ia5));
    }
    names
}

/// Makes a CSR from explicit rcgen parameters (SANs, `is_ca`, …).
/// RSA keys come from `openssl req`, which then honours only the SANs.
pub fn make_csr_from(key_type: &str, params: rcgen::CertificateParams) -> (String, String) {
    let algorithm = match key_type {
        "ec-p256" => &rcgen::PKCS_ECDSA_P256_SHA256,
        "ec-p384" => &rcgen::PKCS_ECDSA_P384_SHA384,
        "ed25519" => &rcgen::PKCS_ED25519,
        other => {
            let bits = other
                .strip_prefix("rsa-")
                .and_then(|bits| bits.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("unknown key type {other:?}"));
            return openssl_rsa_csr(bits, &params.subject_alt_names);
        }
    };
    let key = rcgen::KeyPair::generate_for(algorithm).expect("generate a key");
    let csr = params
        .serialize_request(&key)
        .expect("serialise the CSR")
        .pem()
        .expect("PEM-encode the CSR");
    (csr, key.serialize_pem())
}

/// `openssl req -new -newkey rsa:<bits>` with the given SANs.
pub fn openssl_rsa_csr(bits: u32, names: &[rcgen::SanType]) -> (String, String) {
    let san: Vec<String> = names
        .iter()
        .map(|name| match name {
            rcgen::SanType::DnsName(dns) => format!("DNS:{}", dns.as_str()),
            rcgen::SanType::IpAddress(ip) => format!("IP:{ip}"),
            rcgen::SanType::URI(uri) => format!("URI:{}", uri.as_str()),
            other => panic!("openssl_rsa_csr cannot express {other:?}"),
        })
        .collect();
    let dir = tempfile::tempdir().expect("temporary directory");
    let key_path = dir.path().join("key.pem");
    let csr_path = dir.path().join("csr.pem");
    let mut command = Command::new("openssl");
    command
        .args(["req", "-new", "-newkey", &format!("rsa:{bits}"), "-nodes"])
        .arg("-keyout")
        .arg(&key_path)
        .arg("-out")
        .arg(&csr_path)
        .args(["-subj", "/CN=certmint-e2e"]);
    if !san.is_empty() {
        command.args(["-addext", &format!("subjectAltName={}", san.join(","))]);
    }
    let output = command.output().expect("run openssl req");
    assert!(
        output.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        std::fs::read_to_string(&csr_path).expect("read the CSR"),
        std::fs::read_to_string(&key_path).expect("read the key"),
    )
}

/// The DER inside a PEM block.
#[track_caller]
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    der::pem::decode_vec(pem.as_bytes())
        .unwrap_or_else(|error| panic!("not PEM ({error}): {pem}"))
        .1
}

/// PEM-encodes `der` with `label`.
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).expect("PEM-encode")
}

// ---- tokens -----------------------------------------------------------------

/// Base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The header segment (as sent) and the decoded claims of a JWT.
#[track_caller]
pub fn jwt_segments(token: &str) -> (String, Value) {
    let mut parts = token.split('.');
    let header = parts.next().expect("JWT header").to_owned();
    let claims = parts.next().expect("JWT claims");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .expect("claims are base64url");
    (
        header,
        serde_json::from_slice(&claims).expect("claims are JSON"),
    )
}

/// The decoded JWT header.
#[track_caller]
pub fn jwt_header(token: &str) -> Value {
    let (header, _) = jwt_segments(token);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("header is base64url");
    serde_json::from_slice(&bytes).expect("header is JSON")
}

/// The claims of `token` under a new header `alg: none` and no signature.
pub fn forge_alg_none(token: &str) -> String {
    let (_, claims) = jwt_segments(token);
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

/// The claims of `token` signed HS256 with `secret` (the `kid` kept).
pub fn forge_hs256(token: &str, secret: &[u8]) -> String {
    let (_, claims) = jwt_segments(token);
    let mut header = jwt_header(token);
    header["alg"] = json!("HS256");
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(tag.as_ref()))
}

/// The claims of `token` signed EdDSA by a fresh key nobody registered;
/// `kid` replaces the header's key id (`None` keeps the server's).
pub fn forge_foreign_ed25519(token: &str, kid: Option<&str>) -> String {
    let (_, claims) = jwt_segments(token);
    let mut header = jwt_header(token);
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("generate a key");
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("load the key");
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(signature.as_ref()))
}

/// An external token issuer as an orchestrator runs one: a P-256 key of
/// its own, and bootstrap tokens it signs ES256 without the server.
pub struct TestProvisioner {
    /// Registered name; the `iss` of its tokens.
    pub name: String,
    /// SubjectPublicKeyInfo PEM, to register.
    pub public_key_pem: String,
    key: ring::signature::EcdsaKeyPair,
}

impl TestProvisioner {
    /// A fresh key for `name`.
    pub fn new(name: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let algorithm = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(algorithm, &rng)
            .expect("generate a P-256 key");
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref(), &rng)
            .expect("load the key");
        let public_key_pem = rcgen::KeyPair::try_from(pkcs8.as_ref())
            .expect("rcgen reads the key")
            .public_key_pem();
        Self {
            name: name.to_owned(),
            public_key_pem,
            key,
        }
    }

    /// `POST /v1/admin/provisioners` body for `policies`.
    pub fn registration(&self, policies: &[&str]) -> Value {
        json!({
            "name": self.name,
            "public_key_pem": self.public_key_pem,
            "policies": policies,
        })
    }

    /// `claims` signed ES256 (header `alg` and `typ` only).
    pub fn sign(&self, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            b64url(br#"{"alg":"ES256","typ":"JWT"}"#),
            b64url(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let signature = self.key.sign(&rng, signing_input.as_bytes()).expect("sign");
        format!("{signing_input}.{}", b64url(signature.as_ref()))
    }

    /// The claims of a token for `policy` and `identity`, valid for two
    /// minutes from now, with `jti` and `audience` (the server's
    /// `<public_url>/v1/enroll`).
    pub fn claims(&self, audience: &str, policy: &str, identity: &Value, jti: &str) -> Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        json!({
            "iss": self.name,
            "aud": audience,
            "sub": "workload",
            "jti": jti,
            "iat": now,
            "exp": now + 120,
            "policy": policy,
            "identity": identity,
        })
    }

    /// A signed token with [`Self::claims`].
    pub fn token(&self, audience: &str, policy: &str, identity: &Value, jti: &str) -> String {
        self.sign(&self.claims(audience, policy, identity, jti))
    }
}

// ---- certificate checks -----------------------------------------------------

/// Every certificate in a PEM chain, as DER, in order.
#[track_caller]
pub fn pem_chain(pem: &str) -> Vec<Vec<u8>> {
    x509_cert::Certificate::load_pem_chain(pem.as_bytes())
        .unwrap_or_else(|error| panic!("not a PEM certificate chain ({error}): {pem}"))
        .iter()
        .map(|certificate| certificate.to_der().expect("re-encode a certificate"))
        .collect()
}

/// Parses one DER certificate.
#[track_caller]
pub fn parse_certificate(der: &[u8]) -> x509_cert::Certificate {
    x509_cert::Certificate::from_der(der).expect("a DER X.509 certificate")
}

/// Verifies `leaf` up to `root` through `intermediates` with rustls-webpki,
/// now, requiring the EKU `eku` (DER content bytes of the OID).
#[track_caller]
pub fn verify_with_webpki(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    root: &[u8],
    eku: &'static [u8],
) -> Result<(), webpki::Error> {
    use rustls_pki_types::{CertificateDer, UnixTime};

    let root = CertificateDer::from(root.to_vec());
    let anchor = webpki::anchor_from_trusted_cert(&root)?.to_owned();
    let leaf = CertificateDer::from(leaf.to_vec());
    let end_entity = webpki::EndEntityCert::try_from(&leaf)?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &intermediates,
            UnixTime::now(),
            webpki::KeyUsage::required_if_present(eku),
            None,
            None,
        )
        .map(|_| ())
}

/// `openssl verify -CAfile root.pem -untrusted issuing.pem [-purpose p] leaf.pem`;
/// returns `Err(output)` when OpenSSL refuses.
pub fn verify_with_openssl(
    leaf_pem: &str,
    intermediates_pem: &str,
    root_pem: &str,
    purpose: Option<&str>,
) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write a PEM file");
        path
    };
    let root = write("root.pem", root_pem);
    let untrusted = write("issuing.pem", intermediates_pem);
    let leaf = write("leaf.pem", leaf_pem);
    let mut command = Command::new("openssl");
    command
        .arg("verify")
        .args(["-x509_strict", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&untrusted);
    if let Some(purpose) = purpose {
        command.args(["-purpose", purpose]);
    }
    let output = command.arg(&leaf).output().expect("run openssl verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() && text.contains(": OK") {
        Ok(())
    } else {
        Err(text)
    }
}

/// Runs a real TLS 1.2/1.3 handshake in memory with client authentication:
/// the server presents `server_chain` (leaf first) for `server_name`, the
/// client presents `client_chain`; both sides trust only `root`. Then one
/// application message crosses. Keys are PKCS#8 PEM.
pub fn mtls_handshake(
    root: &[u8],
    server_name: &str,
    server_chain: &[Vec<u8>],
    server_key_pem: &str,
    client_chain: &[Vec<u8>],
    client_key_pem: &str,
) -> Result<(), String> {
    use std::io::{Read as _, Write as _};

    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.to_vec()))
        .map_err(|error| format!("root: {error}"))?;
    let roots = Arc::new(roots);
    let chain = |ders: &[Vec<u8>]| -> Vec<CertificateDer<'static>> {
        ders.iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect()
    };
    let key = |pem: &str| -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem_to_der(pem)))
    };
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|error| format!("client verifier: {error}"))?;
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(server_chain), key(server_key_pem))
        .map_err(|error| format!("server certificate: {error}"))?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain(client_chain), key(client_key_pem))
        .map_err(|error| format!("client certificate: {error}"))?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(|error| error.to_string())?;
    let mut client = rustls::ClientConnection::new(Arc::new(client_config), name)
        .map_err(|error| error.to_string())?;
    let mut server = rustls::ServerConnection::new(Arc::new(server_config))
        .map_err(|error| error.to_string())?;
    client
        .writer()
        .write_all(b"ping")
        .map_err(|error| error.to_string())?;
    let mut received = Vec::new();
    for _ in 0..32 {
        let mut wire = Vec::new();
        client
            .write_tls(&mut wire)
            .map_err(|error| error.to_string())?;
        server
            .read_tls(&mut wire.as_slice())
            .map_err(|error| error.to_string())?;
        server
            .process_new_packets()
            .map_err(|error| format!("server side: {error}"))?;
        let mut wire = Vec::new();
        server
            .write_tls(&mut wire)
            .map_err(|error| error.to_string())?;
        client
            .read_tls(&mut wire.as_slice())
            .map_err(|error| error.to_string())?;
        client
            .process_new_packets()
            .map_err(|error| format!("client side: {error}"))?;
        let mut buffer = [0u8; 16];
        match server.reader().read(&mut buffer) {
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error.to_string()),
        }
        if !client.is_handshaking() && !server.is_handshaking() && received == b"ping" {
            return match server.peer_certificates() {
                Some(presented)
                    if presented.first().map(|c| c.as_ref())
                        == client_chain.first().map(Vec::as_slice) =>
                {
                    Ok(())
                }
                other => Err(format!("server saw client certificates {other:?}")),
            };
        }
    }
    Err("handshake did not complete".to_owned())
}

// ---- process plumbing -------------------------------------------------------

/// The environment every child gets: its own SoftHSM2 config and the PIN.
struct ChildEnv {
    softhsm_conf: PathBuf,
    hsm_pin: String,
}

impl ChildEnv {
    /// hsm-sim's state directory: `hsm-sim/` beside `softhsm2.conf`, in the
    /// server's own temporary directory.
    fn hsm_sim_dir(&self) -> PathBuf {
        self.softhsm_conf.with_file_name("hsm-sim")
    }

    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .env("SOFTHSM2_CONF", &self.softhsm_conf)
            .env("HSM_SIM_DIR", self.hsm_sim_dir())
            .env_remove("HSM_SIM_CONFIG")
            .env("CERTMINT_HSM_PIN", &self.hsm_pin)
            .env_remove("CERTMINT_HSM_SO_PIN")
            .stdin(Stdio::null());
        command
    }
}

/// The `certmint-server` binary: `$CERTMINT_SERVER_BIN`, else the one beside
/// this test executable's target directory.
pub fn server_binary() -> PathBuf {
    std::env::var_os("CERTMINT_SERVER_BIN")
        .map_or_else(|| built_artifact("certmint-server"), PathBuf::from)
}

/// hsm-sim's PKCS#11 module built with this workspace: `deps/` first (what
/// `cargo test` refreshes), then the target directory (`cargo build`).
pub fn hsm_sim_module() -> PathBuf {
    built_artifact("libhsm_sim.so")
}

/// The `hsm-sim` control CLI beside this test executable's target directory.
pub fn hsm_sim_binary() -> PathBuf {
    built_artifact("hsm-sim")
}

/// The `certmint` agent/admin binary: `$CERTMINT_BIN`, else the one beside
/// this test executable's target directory.
pub fn certmint_binary() -> PathBuf {
    std::env::var_os("CERTMINT_BIN").map_or_else(|| built_artifact("certmint"), PathBuf::from)
}

/// The file `name` in the nearest directory above this test executable
/// (`target/<profile>/deps/`, then `target/<profile>/`, …) that holds it.
fn built_artifact(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found above {}: run `cargo build --workspace` first",
                exe.display()
            )
        })
}

fn spawn_supervisor(
    binary: &Path,
    env: &ChildEnv,
    config: &Path,
    log: &Path,
    dir: &Path,
    database: Option<&PostgresDatabase>,
    log_format: &str,
) -> Supervisor {
    // The supervisor: start serve, block until our stdin closes, then clean
    // up. The 10 s KILL bounds a graceful shutdown that hangs.
    // Lines on stdin control it: `stop` stops serve (TERM, then KILL after
    // 10 s), `start` starts it again with the same config and port.
    const SCRIPT: &str = r#"
server=
start() {
  "$CERTMINT_BIN" serve --config "$CERTMINT_CONFIG" --log-format "$CERTMINT_E2E_LOG_FORMAT" >>"$CERTMINT_E2E_LOG_FILE" 2>&1 </dev/null &
  server=$!
  echo "$server" >"$CERTMINT_DIR/server.pid.tmp" && mv "$CERTMINT_DIR/server.pid.tmp" "$CERTMINT_DIR/server.pid"
}
stop() {
  [ -n "$server" ] || return 0
  kill -TERM "$server" 2>/dev/null
  ( sleep 10; kill -KILL "$server" 2>/dev/null ) &
  killer=$!
  wait "$server"
  kill "$killer" 2>/dev/null
  server=
  rm -f "$CERTMINT_DIR/server.pid"
  echo stopped >"$CERTMINT_DIR/server.stopped"
}
start
while read -r command; do
  case "$command" in
    stop) stop ;;
    start) rm -f "$CERTMINT_DIR/server.stopped"; start ;;
  esac
done
stop
if [ -n "$CERTMINT_DROP_DB" ]; then
  psql "$CERTMINT_PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$CERTMINT_DROP_DB\" WITH (FORCE)" >/dev/null 2>&1
fi
if [ "$CERTMINT_KEEP" != 1 ]; then
  rm -rf "$CERTMINT_DIR"
fi
"#;
    let mut command = env.command(Path::new("sh"));
    command
        .args(["-c", SCRIPT])
        .env("CERTMINT_BIN", binary)
        .env("CERTMINT_CONFIG", config)
        // Not CERTMINT_LOG: serve reads that as its log filter.
        .env("CERTMINT_E2E_LOG_FILE", log)
        .env("CERTMINT_E2E_LOG_FORMAT", log_format)
        .env("CERTMINT_DIR", dir)
        .env(
            "CERTMINT_KEEP",
            if env_flag("CERTMINT_E2E_KEEP") {
                "1"
            } else {
                "0"
            },
        )
        .env(
            "CERTMINT_DROP_DB",
            database.map_or("", |database| database.name.as_str()),
        )
        .env(
            "CERTMINT_PG_ADMIN_URL",
            database.map_or("", |database| database.admin_url.as_str()),
        )
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().expect("spawn the server supervisor (sh)");
    let stdin = child.stdin.take();
    Supervisor { child, stdin }
}

fn wait_for_pid_file(pid_file: &Path, log: &Path) -> u32 {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(pid_file) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "the supervisor never started certmint-server serve:\n{}",
        read_from(log, 0)
    );
}

fn wait_for_health(client: &reqwest::blocking::Client, base_url: &str, pid: u32, log: &Path) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        if !process_alive(pid) {
            panic!(
                "certmint-server serve exited during start-up:\n{}",
                read_from(log, 0)
            );
        }
        match client
            .get(format!("{base_url}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
        {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => last_error = format!("status {}", response.status()),
            Err(error) => last_error = format!("{error:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "GET /healthz did not succeed within {STARTUP_TIMEOUT:?} (last: {last_error}):\n{}",
        read_from(log, 0)
    );
}

/// True while `pid` runs (a zombie counts as exited).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
    }
}

fn mint_admin_token(binary: &Path, env: &ChildEnv, config: &Path, role: &str) -> String {
    let output = env
        .command(binary)
        .arg("admin-token")
        .arg("--config")
        .arg(config)
        .args([
            "--role",
            role,
            "--subject",
            &format!("e2e-{role}"),
            "--ttl",
            "12h",
        ])
        .output()
        .expect("run certmint-server admin-token");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success() && stdout.split('.').count() == 3,
        "admin-token --role {role} failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Finds `root fingerprint: sha256:<64 hex>` in `init`'s output.
pub fn parse_root_fingerprint(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let value = line.trim().strip_prefix("root fingerprint: ")?;
        let hex = value.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| value.to_owned())
    })
}

fn https_client(root_pem: &str) -> reqwest::blocking::Client {
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_chain(root_pem) {
        roots
            .add(rustls_pki_types::CertificateDer::from(der))
            .expect("root.pem is a usable trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(REQUEST_TIMEOUT)
        // See the SDK's IDLE_CONNECTION_REUSE: a test that sleeps about
        // 5 s between requests would otherwise race the server's
        // keep-alive close.
        .pool_idle_timeout(certmint::client::IDLE_CONNECTION_REUSE)
        .build()
        .expect("build the HTTPS client")
}

/// Like [`https_client`], presenting a client certificate.
fn mtls_client(root_pem: &str, certificate_pem: &str, key_pem: &str) -> reqwest::blocking::Client {
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_chain(root_pem) {
        roots
            .add(rustls_pki_types::CertificateDer::from(der))
            .expect("root.pem is a usable trust anchor");
    }
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> = pem_chain(certificate_pem)
        .into_iter()
        .map(rustls_pki_types::CertificateDer::from)
        .collect();
    use rustls_pki_types::pem::PemObject as _;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .expect("a PEM PKCS#8, SEC1 or PKCS#1 key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("a usable client certificate and key");
    install_crypto_provider();
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(REQUEST_TIMEOUT)
        // See the SDK's IDLE_CONNECTION_REUSE: a test that sleeps about
        // 5 s between requests would otherwise race the server's
        // keep-alive close.
        .pool_idle_timeout(certmint::client::IDLE_CONNECTION_REUSE)
        .build()
        .expect("build the mTLS client")
}

/// reqwest may look for a process-wide provider; install ring's once.
fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // An error means another provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// `n` random bytes as lower-case hex.
pub fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random");
    hex::encode(bytes)
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| value == "1" || value.eq_ignore_ascii_case("true"))
}

fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("<no log at {}>", path.display());
    };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("<unreadable log at {}>", path.display());
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

// ---- PostgreSQL -------------------------------------------------------------

struct PostgresDatabase {
    name: String,
    url: String,
    admin_url: String,
}

fn create_postgres_database() -> Result<PostgresDatabase, Skip> {
    let admin_url = std::env::var("CERTMINT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    let unreachable = |reason: String| {
        if env_flag("CERTMINT_REQUIRE_POSTGRES") {
            panic!("PostgreSQL at {admin_url} is required (CERTMINT_REQUIRE_POSTGRES=1): {reason}");
        }
        Skip(format!("PostgreSQL at {admin_url} unreachable: {reason}"))
    };
    let name = format!("certmint_e2e_{}", random_hex(6));
    let output = Command::new("psql")
        .arg(&admin_url)
        .args(["-v", "ON_ERROR_STOP=1", "-qc"])
        .arg(format!("CREATE DATABASE \"{name}\""))
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| unreachable(format!("cannot run psql: {error}")))?;
    if !output.status.success() {
        return Err(unreachable(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    let url = replace_database(&admin_url, &name);
    Ok(PostgresDatabase {
        name,
        url,
        admin_url,
    })
}

fn drop_postgres_database(database: Option<&PostgresDatabase>) {
    if let Some(database) = database {
        let _ = Command::new("psql")
            .arg(&database.admin_url)
            .arg("-qc")
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                database.name
            ))
            .stdin(Stdio::null())
            .output();
    }
}

/// `postgres://user@host:port/old?x` with the database replaced by `name`.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |index| index + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |index| authority_start + index);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        let _ = write!(out, "?{query}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness keeps its promise: dropping a server stops the process,
    /// removes its directory and drops its database.
    #[test]
    fn ok_dropping_a_test_server_cleans_up() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let Some(server) = TestServer::start(backend) else {
                continue;
            };
            server.get("/healthz").assert_status(200);
            let pid = server.server_pid();
            let dir = server.dir().to_path_buf();
            let database = server.database_name().map(str::to_owned);
            assert!(process_alive(pid));
            drop(server);
            assert!(!process_alive(pid), "{backend:?}: server {pid} still runs");
            if !env_flag("CERTMINT_E2E_KEEP") {
                assert!(!dir.exists(), "{backend:?}: {} left behind", dir.display());
            }
            if let Some(name) = database {
                let admin_url = std::env::var("CERTMINT_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
                let output = Command::new("psql")
                    .arg(&admin_url)
                    .arg("-Atc")
                    .arg(format!(
                        "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
                    ))
                    .output()
                    .expect("run psql");
                assert_eq!(
                    String::from_utf8_lossy(&output.stdout).trim(),
                    "0",
                    "database {name} left behind"
                );
            }
        }
    }

    #[test]
    fn ok_replace_database() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://u@h", "x"), "postgres://u@h/x");
    }

    #[test]
    fn ok_parse_root_fingerprint() {
        let hex = "ab".repeat(32);
        assert_eq!(
            parse_root_fingerprint(&format!("x\nroot fingerprint: sha256:{hex}\n")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(parse_root_fingerprint("root fingerprint: sha256:zz"), None);
    }
}
