//! Workload-side helpers for agent tests: running `certmint enroll`/`agent`
//! and holding mutual-TLS connections with the files they write.
//!
//! - [`Workload`]: a temporary directory with `agent.toml`, a token file and
//!   an output directory, for one workload of a [`TestServer`].
//! - [`AgentProcess`]: a running `certmint agent` or `certmint enroll`
//!   (stderr captured to a file), stopped with SIGTERM or killed when
//!   dropped.
//! - [`read_generation`]: the reader the output directory documents:
//!   resolve `..data` once, read key and certificate from there.
//! - [`EchoServer`] / [`echo_client`]: a small rustls echo server that
//!   requires client certificates, and its client; [`openssl_s_server`] and
//!   [`openssl_s_client`] do the same with OpenSSL, for interoperability.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use der::{Decode as _, Encode as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use crate::process::CommandOutput;
use crate::{certmint_binary, TestServer};

/// How long a TLS exchange may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `certmint <args>` to completion with extra environment.
pub fn certmint(args: &[&str], env: &[(&str, &str)]) -> CommandOutput {
    run_certmint(Command::new(certmint_binary()), args, env)
}

/// [`certmint`] as another user (`uid`, with `gid` as its only group);
/// needs root.
pub fn certmint_as(uid: u32, gid: u32, args: &[&str]) -> CommandOutput {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(certmint_binary());
    command.uid(uid).gid(gid);
    run_certmint(command, args, &[])
}

fn run_certmint(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> CommandOutput {
    command
        .args(args)
        .env_remove("CERTMINT_TOKEN")
        .env("CERTMINT_LOG", "info")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    CommandOutput::of(&mut command, &format!("certmint {}", args.join(" ")))
}

/// One workload: its own directory, token file, `agent.toml` and output.
pub struct Workload {
    /// Holds everything; removed on drop.
    pub dir: tempfile::TempDir,
    /// The output directory the agent writes.
    pub out: PathBuf,
    /// `agent.toml`.
    pub config: PathBuf,
    /// The token file.
    pub token_file: PathBuf,
    /// The reload hook appends each serial here.
    pub hook_log: PathBuf,
    /// `certmint enroll` arguments for the same server, names, token,
    /// output directory and reload hook as `agent.toml`.
    enroll_args: Vec<String>,
}

impl Workload {
    /// A workload of `server` asking for `dns`, with `token`; `top` adds
    /// top-level `agent.toml` keys (e.g. `ttl = "6s"`).
    pub fn new(server: &TestServer, token: &str, dns: &[&str], top: &str) -> Workload {
        let dir = tempfile::tempdir().expect("temporary directory");
        let out = dir.path().join("out");
        let config = dir.path().join("agent.toml");
        let token_file = dir.path().join("token");
        let hook_log = dir.path().join("hook.log");
        std::fs::write(&token_file, token).expect("write the token file");
        let names: Vec<String> = dns.iter().map(|name| format!("{name:?}")).collect();
        let hook = format!("echo \"$CERTMINT_SERIAL\" >> {}", hook_log.display());
        let text = format!(
            r#"server = "{server_url}"
root_fingerprint = "{fingerprint}"
token_file = "token"
output_dir = "out"
{top}
[names]
dns = [{names}]

[renewal]
jitter = 0.0

[backoff]
initial = "1s"
max = "2s"

[reload]
command = ["sh", "-c", {hook:?}]
timeout = "10s"
"#,
            server_url = server.base_url(),
            fingerprint = server.root_fingerprint(),
            names = names.join(", "),
        );
        std::fs::write(&config, text).expect("write agent.toml");
        let path = |path: &Path| path.display().to_string();
        let mut enroll_args: Vec<String> = [
            "enroll",
            "--server",
            server.base_url(),
            "--root-fingerprint",
            server.root_fingerprint(),
            "--token-file",
            &path(&token_file),
            "--out",
            &path(&out),
            "--reload-timeout",
            "10s",
        ]
        .map(str::to_owned)
        .into();
        for name in dns {
            enroll_args.extend(["--dns".to_owned(), (*name).to_owned()]);
        }
        enroll_args.extend(["--", "sh", "-c", &hook].map(str::to_owned));
        Workload {
            dir,
            out,
            config,
            token_file,
            hook_log,
            enroll_args,
        }
    }

    /// Replaces the reload command of `agent.toml` with `argv`.
    pub fn set_reload_command(&self, argv: &[&str]) {
        let config = std::fs::read_to_string(&self.config).expect("read agent.toml");
        let command_line = config
            .lines()
            .find(|line| line.starts_with("command = "))
            .expect("a reload command")
            .to_owned();
        // Debug quoting of plain strings is TOML's basic-string quoting.
        let config = config.replace(&command_line, &format!("command = {argv:?}"));
        std::fs::write(&self.config, config).expect("write agent.toml");
    }

    /// `certmint agent --config … --once [--retry-for …]`.
    pub fn agent_once(&self, retry_for: &str) -> CommandOutput {
        let config = self.config.display().to_string();
        certmint(
            &[
                "agent",
                "--config",
                &config,
                "--once",
                "--retry-for",
                retry_for,
            ],
            &[],
        )
    }

    /// Starts `certmint agent --config …` in the background.
    pub fn spawn_agent(&self) -> AgentProcess {
        let config = self.config.display().to_string();
        spawn(&["agent", "--config", &config], self.agent_log_path())
    }

    /// Starts `certmint enroll` in the background, with the settings of
    /// `agent.toml` as flags (the same reload hook, so
    /// [`Workload::hook_serials`] sees its run); its log goes to
    /// `enroll.log`.
    pub fn spawn_enroll(&self) -> AgentProcess {
        let args: Vec<&str> = self.enroll_args.iter().map(String::as_str).collect();
        spawn(&args, self.dir.path().join("enroll.log"))
    }

    /// Where [`Workload::spawn_agent`] sends the agent's log (stderr).
    pub fn agent_log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.agent_log_path()).unwrap_or_default()
    }

    /// The current generation, read the consistent way.
    pub fn current(&self) -> Result<Generation, String> {
        read_generation(&self.out)
    }

    /// Serial in the current `meta.json`, if any.
    pub fn serial(&self) -> Option<String> {
        self.current().ok().map(|generation| generation.serial())
    }

    /// `<out>/<name>` (a stable top-level path).
    pub fn path(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    /// Serials the reload hook saw, in order.
    pub fn hook_serials(&self) -> Vec<String> {
        std::fs::read_to_string(&self.hook_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Starts `certmint <args>` in the background, stderr (the log) to `log`.
fn spawn(args: &[&str], log: PathBuf) -> AgentProcess {
    let stderr = std::fs::File::create(&log).expect("create the log file");
    let child = Command::new(certmint_binary())
        .args(args)
        .env_remove("CERTMINT_TOKEN")
        .env("CERTMINT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|error| panic!("start certmint {}: {error}", args[0]));
    AgentProcess { child, log }
}

/// A running `certmint agent` (or `certmint enroll`); killed on drop.
pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `HUP`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `timeout` for the agent to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the agent") {
                return status.code();
            }
            if Instant::now() >= deadline {
                panic!(
                    "the agent did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits until `done()` holds; panics with the agent's log after `timeout`.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            if let Some(status) = self.child.try_wait().expect("poll the agent") {
                panic!(
                    "waiting for {what}: the agent exited ({status}); log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; agent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One generation of the output directory, read through one resolution of
/// `..data`.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The resolved generation directory.
    pub dir: PathBuf,
    /// key.pem.
    pub key_pem: String,
    /// cert.pem.
    pub cert_pem: String,
    /// ca.pem.
    pub ca_pem: String,
    /// meta.json.
    pub meta: Value,
}

impl Generation {
    /// The serial in meta.json.
    pub fn serial(&self) -> String {
        self.meta
            .get("serial")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

/// Resolves `<out>/..data` once and reads every file from that directory;
/// `Err` when anything is missing, unparsable, or the key does not match
/// the certificate.
pub fn read_generation(out: &Path) -> Result<Generation, String> {
    let dir = std::fs::canonicalize(out.join("..data"))
        .map_err(|error| format!("resolve ..data: {error}"))?;
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|error| format!("read {}: {error}", dir.join(name).display()))
    };
    let key_pem = read("key.pem")?;
    let cert_pem = read("cert.pem")?;
    let ca_pem = read("ca.pem")?;
    let meta: Value =
        serde_json::from_str(&read("meta.json")?).map_err(|error| format!("meta.json: {error}"))?;
    check_key_matches(&cert_pem, &key_pem)?;
    parse_chain(&ca_pem)?;
    let serial = meta
        .get("serial")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let leaf_serial = leaf_serial(&cert_pem)?;
    if serial != leaf_serial {
        return Err(format!(
            "meta.json says serial {serial}, cert.pem holds {leaf_serial}"
        ));
    }
    Ok(Generation {
        dir,
        key_pem,
        cert_pem,
        ca_pem,
        meta,
    })
}

/// Parses every certificate of a PEM file; `Err` if none or any is broken.
pub fn parse_chain(pem: &str) -> Result<Vec<x509_cert::Certificate>, String> {
    let chain = x509_cert::Certificate::load_pem_chain(pem.as_bytes())
        .map_err(|error| format!("not a PEM certificate chain: {error}"))?;
    if chain.is_empty() {
        return Err("no certificate".into());
    }
    Ok(chain)
}

/// Lower-case hex serial of the first certificate.
pub fn leaf_serial(cert_pem: &str) -> Result<String, String> {
    let chain = parse_chain(cert_pem)?;
    Ok(hex::encode(
        chain[0].tbs_certificate().serial_number().as_bytes(),
    ))
}

/// The DER SubjectPublicKeyInfo of the first certificate in `cert_pem`.
fn leaf_spki_der(cert_pem: &str) -> Result<Vec<u8>, String> {
    let chain = parse_chain(cert_pem)?;
    chain[0]
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|error| error.to_string())
}

/// SHA-256 of the leaf's SubjectPublicKeyInfo, hex.
pub fn spki_fingerprint(cert_pem: &str) -> Result<String, String> {
    let spki = leaf_spki_der(cert_pem)?;
    Ok(hex::encode(
        ring::digest::digest(&ring::digest::SHA256, &spki).as_ref(),
    ))
}

/// The key's public half equals the leaf's SubjectPublicKeyInfo.
pub fn check_key_matches(cert_pem: &str, key_pem: &str) -> Result<(), String> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|error| format!("key.pem does not parse: {error}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| format!("key.pem is not a usable key: {error}"))?;
    let public = signing
        .public_key()
        .ok_or("the key's public half is unknown")?;
    let spki = leaf_spki_der(cert_pem)?;
    if public.as_ref() == spki.as_slice() {
        Ok(())
    } else {
        Err("key.pem does not match cert.pem".into())
    }
}

// ---- mutual TLS -------------------------------------------------------------

fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

fn private_key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("a PEM private key")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the echo server saw on one connection: the client's leaf serial
/// (hex) and the line echoed, or why the connection failed.
pub type EchoResult = Result<(String, String), EchoRefusal>;

/// Why the echo server refused or lost a connection. A TLS refusal keeps
/// rustls's own error, so a test matches the reason, not its wording.
#[derive(Debug)]
pub enum EchoRefusal {
    /// rustls refused the handshake (bad, missing or expired client
    /// certificate, …) or a record.
    Tls(rustls::Error),
    /// Anything else: I/O, no connection, no client certificate seen.
    Other(String),
}

impl std::fmt::Display for EchoRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EchoRefusal::Tls(error) => write!(f, "TLS: {error}"),
            EchoRefusal::Other(reason) => f.write_str(reason),
        }
    }
}

impl EchoRefusal {
    /// The rustls error inside an I/O error (how a `StreamOwned` reports a
    /// refused handshake), else the I/O error described with `context`.
    fn from_io(context: &str, error: std::io::Error) -> EchoRefusal {
        let description = format!("{context}: {error}");
        match error
            .into_inner()
            .map(|inner| inner.downcast::<rustls::Error>())
        {
            Some(Ok(tls)) => EchoRefusal::Tls(*tls),
            _ => EchoRefusal::Other(description),
        }
    }
}

/// A rustls echo server on 127.0.0.1 that requires a client certificate
/// chaining to `ca.pem`, presenting `cert.pem`/`key.pem`. It echoes one line
/// per connection.
pub struct EchoServer {
    /// Its port.
    pub port: u16,
    results: mpsc::Receiver<EchoResult>,
}

impl EchoServer {
    /// Serves `connections` connections with the files at these paths.
    pub fn start(cert: &Path, key: &Path, ca: &Path, connections: usize) -> EchoServer {
        let read = |path: &Path| std::fs::read_to_string(path).expect("read a PEM file");
        let mut roots = rustls::RootCertStore::empty();
        for root in certificates(&read(ca)) {
            roots.add(root).expect("a usable root");
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("client verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certificates(&read(cert)), private_key(&read(key)))
            .expect("server certificate and key");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
        let port = listener.local_addr().expect("local address").port();
        let (sender, results) = mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..connections {
                let Ok((tcp, _)) = listener.accept() else {
                    return;
                };
                let _ = sender.send(serve_one(config.clone(), tcp));
            }
        });
        EchoServer { port, results }
    }

    /// The outcome of the next connection.
    pub fn next_result(&self) -> EchoResult {
        self.results
            .recv_timeout(IO_TIMEOUT * 2)
            .unwrap_or_else(|_| {
                Err(EchoRefusal::Other(
                    "no connection reached the echo server".to_owned(),
                ))
            })
    }
}

fn serve_one(config: Arc<rustls::ServerConfig>, tcp: TcpStream) -> EchoResult {
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|error| EchoRefusal::from_io("set the read timeout", error))?;
    let connection = rustls::ServerConnection::new(config).map_err(EchoRefusal::Tls)?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let mut line = String::new();
    BufReader::new(&mut stream)
        .read_line(&mut line)
        .map_err(|error| EchoRefusal::from_io("server side", error))?;
    let peer = stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| {
            x509_cert::Certificate::from_der(leaf.as_ref())
                .map(|cert| hex::encode(cert.tbs_certificate().serial_number().as_bytes()))
                .unwrap_or_default()
        })
        .ok_or_else(|| EchoRefusal::Other("no client certificate".to_owned()))?;
    stream
        .write_all(line.as_bytes())
        .map_err(|error| EchoRefusal::from_io("server write", error))?;
    stream.conn.send_close_notify();
    stream
        .flush()
        .map_err(|error| EchoRefusal::from_io("server flush", error))?;
    Ok((peer, line))
}

/// Connects to 127.0.0.1:`port` as `server_name`, trusting `ca`, presenting
/// `identity` (cert, key paths) if given; sends `ping` and returns the echo.
pub fn echo_client(
    port: u16,
    server_name: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<String, String> {
    let read = |path: &Path| std::fs::read_to_string(path).expect("read a PEM file");
    let mut roots = rustls::RootCertStore::empty();
    for root in certificates(&read(ca)) {
        roots.add(root).expect("a usable root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(&read(cert)), private_key(&read(key)))
            .map_err(|error| format!("client certificate: {error}"))?,
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(server_name.to_owned()).map_err(|error| error.to_string())?;
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|error| error.to_string())?;
    let tcp = connect_with_retry(port)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|error| error.to_string())?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    stream
        .write_all(b"ping\n")
        .map_err(|error| format!("client write: {error}"))?;
    let mut echoed = String::new();
    stream
        .read_to_string(&mut echoed)
        .map_err(|error| format!("client read: {error}"))?;
    if echoed.is_empty() {
        return Err("the server closed without answering".into());
    }
    Ok(echoed)
}

fn connect_with_retry(port: u16) -> Result<TcpStream, String> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(tcp) => return Ok(tcp),
            Err(error) if Instant::now() >= deadline => return Err(error.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `openssl s_server -Verify 1 -verify_return_error -rev` with the files of
/// a workload, for one connection; killed on drop.
pub struct OpensslServer {
    child: Child,
    /// Its port.
    pub port: u16,
    /// Its stdout, line by line (read by a thread, so `ACCEPT` can be
    /// awaited without a probing connection, which would use up the one
    /// connection `-naccept 1` allows).
    lines: mpsc::Receiver<String>,
    /// The intermediates file passed as `-cert_chain`; lives as long as it.
    _chain: tempfile::NamedTempFile,
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OpensslServer {
    /// Waits for it to exit; its output.
    pub fn finish(mut self) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }
}

/// Starts `openssl s_server` requiring a client certificate from `ca`, and
/// waits until it accepts connections.
pub fn openssl_s_server(cert: &Path, key: &Path, ca: &Path) -> OpensslServer {
    let port = free_port();
    let (identity, chain) = openssl_identity(cert, key, ca);
    let mut child = Command::new("openssl")
        .arg("s_server")
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .args(identity)
        .args([
            "-Verify",
            "1",
            "-verify_return_error",
            "-rev",
            "-naccept",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_server");
    let stdout = child.stdout.take().expect("s_server stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.trim() == "ACCEPT" => break,
            Ok(_) => {}
            Err(_) => panic!("openssl s_server did not start listening on {port}"),
        }
    }
    OpensslServer {
        child,
        port,
        lines,
        _chain: chain,
    }
}

/// The arguments both OpenSSL tools take for their own identity and trust
/// anchors, and the intermediates file they name (keep it alive while the
/// tool runs).
fn openssl_identity(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> (Vec<std::ffi::OsString>, tempfile::NamedTempFile) {
    let chain = intermediates_file(cert);
    let arguments = [
        ("-cert", cert),
        ("-cert_chain", chain.path()),
        ("-key", key),
        ("-CAfile", ca),
    ]
    .into_iter()
    .flat_map(|(flag, path)| [flag.into(), path.as_os_str().to_owned()])
    .collect();
    (arguments, chain)
}

/// The certificates after the leaf in `cert` (a `cert.pem`: leaf, then
/// intermediates), in a temporary file. OpenSSL's `-cert` reads only the
/// first certificate of a file; the rest must be given as `-cert_chain`.
fn intermediates_file(cert: &Path) -> tempfile::NamedTempFile {
    let text = std::fs::read_to_string(cert).expect("read cert.pem");
    let rest: String = CertificateDer::pem_slice_iter(text.as_bytes())
        .skip(1)
        .map(|der| {
            let der = der.expect("a PEM certificate");
            crate::der_to_pem("CERTIFICATE", der.as_ref())
        })
        .collect();
    let mut file = tempfile::NamedTempFile::new().expect("temporary chain file");
    file.write_all(rest.as_bytes())
        .expect("write the chain file");
    file
}

/// `openssl s_client` to 127.0.0.1:`port` with a client certificate,
/// verifying the server against `ca` for `server_name`; sends `ping` and
/// returns (success, output).
pub fn openssl_s_client(
    port: u16,
    server_name: &str,
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> (bool, String) {
    let (identity, _chain) = openssl_identity(cert, key, ca);
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", server_name, "-verify_hostname", server_name])
        .args(identity)
        .args(["-verify_return_error", "-quiet", "-no_ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"ping\n");
        // Keep stdin open briefly: closing it at once can end the session
        // before the answer arrives.
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("openssl s_client output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
