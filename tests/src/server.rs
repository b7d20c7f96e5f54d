//! [`TestServer`]: one running `certmint-server serve` and everything a test
//! does with it, over HTTPS and on the server host (its token, its config,
//! its log).
//!
//! Invariants: every response a test sees through [`TestServer::request`]
//! has passed [`assert_well_formed`]; every serial a client received through
//! [`TestServer::enroll_with`] is remembered until
//! [`TestServer::check_invariants`] finds it in the inventory; the
//! supervisor is the last field dropped, because stopping the server removes
//! the directory everything else points into.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use certmint::wire::{AuditEvent, CertificateInfo, CertificateStatus, MintedToken, Page};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::builder::{Prepared, ServerBuilder, ServerOptions};
use crate::hsm::{list_private_keys, Token, TOKEN_SIGNING_KEY_LABEL};
use crate::http::{
    assert_well_formed, https_client, mtls_client, url_encode, Auth, Holder, RequestBody, Response,
};
use crate::jwt::{b64url, jwt_segments};
use crate::process::{
    built_artifact, hsm_sim_binary, random_hex, read_from, server_binary, ChildEnv, CommandOutput,
    STARTUP_TIMEOUT,
};
use crate::supervisor::{spawn_supervisor, wait_for_health, wait_for_pid_file, Supervisor};
use crate::verify::pem_chain;

/// Which database the server under test uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file in the server's directory.
    Sqlite,
    /// A fresh PostgreSQL database `certmint_e2e_<random>`.
    Postgres,
}

/// One running `certmint-server serve`, with everything it needs.
pub struct TestServer {
    pub(crate) backend: Backend,
    options: ServerOptions,
    dir: PathBuf,
    pub(crate) config_path: PathBuf,
    base_url: String,
    /// `http://127.0.0.1:<port>` of the plain-HTTP CRL listener.
    crl_url: String,
    root_pem: String,
    root_fingerprint: String,
    /// The test's offline root, PEM, in external-root mode.
    offline_root_pem: Option<String>,
    admin_token: String,
    auditor_token: String,
    hsm_pin: String,
    module: PathBuf,
    softhsm_conf: PathBuf,
    pub(crate) log_path: PathBuf,
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
    pub(crate) fn launch(
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
            crl_url: format!("http://127.0.0.1:{}", prepared.crl_port),
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
                .map(|database| database.name().to_owned()),
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

    /// `http://127.0.0.1:<port>`: the plain-HTTP CRL listener, the base of
    /// every CRL distribution point this server writes.
    pub fn crl_url(&self) -> &str {
        &self.crl_url
    }

    /// GET of an absolute URL (the CRL listener's, or a distribution point
    /// read from a certificate) with extra request headers, raw: status,
    /// headers and body bytes as sent.
    pub fn fetch(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut request = self.client.get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .unwrap_or_else(|error| panic!("GET {url}: {error}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .unwrap_or_else(|error| panic!("GET {url}: body: {error}"))
            .to_vec();
        (status, headers, body)
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
        self.request_at(&self.base_url, auth, method, path, body)
    }

    /// [`TestServer::request_unchecked`] sent to `base_url`: another
    /// replica of this server ([`crate::Replica`]), which trusts the same
    /// root and accepts the same admin tokens.
    #[track_caller]
    pub(crate) fn request_at(
        &self,
        base_url: &str,
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
        let mut builder = client.request(method.clone(), format!("{base_url}{path}"));
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

    pub(crate) fn child_env(&self) -> ChildEnv {
        ChildEnv {
            softhsm_conf: self.softhsm_conf.clone(),
            hsm_pin: self.hsm_pin.clone(),
        }
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

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::postgres::DEFAULT_POSTGRES_URL;
    use crate::process::{env_flag, process_alive};

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
}
