//! Peers other than certmint refuse a revoked certificate: an nginx mTLS
//! server (the Debian package) and a rustls server built with the SDK's
//! `certmint::mtls::server_config`, each fed by a real `certmint agent`
//! that keeps its certificate and `crl.pem` current. After
//! `certmint admin certificates revoke`, the revoked client is refused and
//! the others are still accepted, without restarting either server (nginx
//! is reloaded by the agent's hook, as docs/REVOCATION.md shows; the rustls
//! server follows the files by itself). `certmint doctor` names the
//! revocation as the cause for the revoked client, and the OpenSSL snippet
//! of docs/REVOCATION.md (`s_server -CRL … -crl_check`) refuses it too.
//!
//! nginx is required when `CERTMINT_REQUIRE_NGINX=1` (CI); otherwise its
//! test says it is skipped when nginx is not installed.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certmint_e2e::cli::{admin, enroll_files, run_certmint, EnrolledFiles};
use certmint_e2e::workload::Workload;
use certmint_e2e::{identity, policy_json, run_test, Backend, TestServer};

/// How long a revocation may take to reach a peer here: the server's CRL
/// (about a second), the agent's refresh (1 s in these tests) and the
/// reload.
const ENFORCED_WITHIN: Duration = Duration::from_secs(30);

/// The agent of the mTLS server under test: its own serverAuth
/// certificate, `crl.pem` refreshed every second, and `hook` as its reload
/// command.
fn server_agent(server: &TestServer, dns: &str, hook: &str) -> Workload {
    let policy = server.unique("peer");
    let mut spec = policy_json(&policy, &[dns], &[], &[]);
    spec["extended_key_usage"] = serde_json::json!(["server_auth", "client_auth"]);
    server.create_policy(&spec);
    let token = server.mint_token(&policy, &identity(&[dns], &[], &[]), 1);
    let workload = Workload::new(server, &token.token, &[dns], "crl.refresh = \"1s\"\n");
    let script = format!(
        "{hook}; echo \"$CERTMINT_SERIAL\" >> {}",
        workload.hook_log.display()
    );
    workload.set_reload_command(&["sh", "-c", &script]);
    workload
}

/// Writes a client's certificate (leaf and chain) and key, for curl.
fn client_files(dir: &Path, name: &str, files: &EnrolledFiles) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &files.cert_pem).expect("write the client certificate");
    std::fs::write(&key, &files.key_pem).expect("write the client key");
    (cert, key)
}

/// `curl` over mTLS: the HTTP status, or None when the handshake failed.
fn curl(host: &str, port: u16, ca: &Path, cert: &Path, key: &Path) -> Option<u16> {
    let output = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("run curl");
    let code: u16 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()?;
    (output.status.success() && code != 0).then_some(code)
}

/// Polls until `done`, or fails naming `what`.
fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The agent has written its certificate, key, roots and CRLs.
fn wait_for_files(workload: &Workload) {
    wait_until(
        "the agent's first enrollment and crl.pem",
        Duration::from_secs(60),
        || {
            ["cert.pem", "key.pem", "ca.pem", "crl.pem"]
                .iter()
                .all(|name| workload.path(name).exists())
                && !workload.hook_serials().is_empty()
        },
    );
}

fn crl_lists(workload: &Workload, serial: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(workload.path("crl.pem")) else {
        return false;
    };
    let serial = serial.trim_start_matches('0');
    rustls_pki_types::pem::PemObject::pem_slice_iter(text.as_bytes())
        .filter_map(
            |item: Result<rustls_pki_types::CertificateRevocationListDer<'static>, _>| item.ok(),
        )
        .any(|crl| {
            use der::Decode as _;
            let Ok(list) =
                x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(
                    crl.as_ref(),
                )
            else {
                return false;
            };
            list.tbs_cert_list
                .revoked_certificates
                .iter()
                .flatten()
                .any(|entry| {
                    hex::encode(entry.serial_number.as_bytes()).trim_start_matches('0') == serial
                })
        })
}

/// A server process of the test, killed when the test ends, however it ends.
struct KillOnDrop {
    child: Child,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_available() -> bool {
    let found = Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var("CERTMINT_REQUIRE_NGINX").as_deref() != Ok("1"),
            "CERTMINT_REQUIRE_NGINX=1 but nginx is not installed (apt-get install nginx)"
        );
        eprintln!(
            "note: SKIPPED: nginx is not installed (set CERTMINT_REQUIRE_NGINX=1 to require it)"
        );
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

#[test]
fn ok_nginx_fed_by_the_agent_refuses_a_revoked_client_and_accepts_the_others() {
    if !nginx_available() {
        return;
    }
    run_test(Backend::Sqlite, "nginx_crl", |server| {
        let host = "nginx.peer.internal";
        let prefix = tempfile::tempdir().expect("nginx prefix");
        let conf = prefix.path().join("nginx.conf");
        let pid = prefix.path().join("nginx.pid");
        // The documented hook: reload nginx when the files change (it reads
        // ssl_crl only at start and reload). Before nginx runs, there is
        // nothing to reload.
        let hook = format!(
            "if [ -s {pid} ]; then nginx -p {prefix} -c {conf} -s reload; fi",
            pid = pid.display(),
            prefix = prefix.path().display(),
            conf = conf.display()
        );
        let workload = server_agent(server, host, &hook);
        let mut agent = workload.spawn_agent();
        wait_for_files(&workload);

        let port = free_port();
        let out = |name: &str| workload.path(name).display().to_string();
        std::fs::write(
            &conf,
            format!(
                r#"daemon off;
pid {pid};
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {host};
        ssl_certificate         {cert};
        ssl_certificate_key     {key};
        ssl_client_certificate  {ca};
        ssl_verify_client       on;
        ssl_verify_depth        2;
        ssl_crl                 {crl};
        location / {{ return 200 "ok\n"; }}
    }}
}}
"#,
                pid = pid.display(),
                prefix = prefix.path().display(),
                cert = out("cert.pem"),
                key = out("key.pem"),
                ca = out("ca.pem"),
                crl = out("crl.pem"),
            ),
        )
        .expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let _nginx = KillOnDrop { child };
        wait_until("nginx listening", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && pid.exists()
        });
        let nginx_pid = std::fs::read_to_string(&pid).expect("nginx.pid");

        let clients = tempfile::tempdir().expect("client dir");
        let revoked = enroll_files(server, "revoked.nginx.peer.internal", &["client_auth"]);
        let kept = enroll_files(server, "kept.nginx.peer.internal", &["client_auth"]);
        let (revoked_cert, revoked_key) = client_files(clients.path(), "revoked", &revoked);
        let (kept_cert, kept_key) = client_files(clients.path(), "kept", &kept);
        let ca = workload.path("ca.pem");
        assert_eq!(
            curl(host, port, &ca, &revoked_cert, &revoked_key),
            Some(200)
        );
        assert_eq!(curl(host, port, &ca, &kept_cert, &kept_key), Some(200));

        admin(
            server,
            &[
                "certificates",
                "revoke",
                &revoked.serial,
                "--reason",
                "key_compromise",
            ],
        )
        .assert_exit(0);
        wait_until(
            "the agent's crl.pem listing the revoked client",
            ENFORCED_WITHIN,
            || crl_lists(&workload, &revoked.serial),
        );
        // nginx answers a refused client certificate with 400 ("The SSL
        // certificate error") after the handshake.
        wait_until("nginx refusing the revoked client", ENFORCED_WITHIN, || {
            curl(host, port, &ca, &revoked_cert, &revoked_key) == Some(400)
        });
        assert_eq!(
            curl(host, port, &ca, &kept_cert, &kept_key),
            Some(200),
            "the other client is still accepted"
        );
        assert_eq!(
            std::fs::read_to_string(&pid).expect("nginx.pid"),
            nginx_pid,
            "nginx was reloaded, not restarted"
        );
        agent.stop();
    });
}

/// A minimal HTTPS server on a rustls configuration: answers 200 to every
/// connection whose handshake succeeds. Runs until the process ends.
fn serve_rustls(config: Arc<rustls::ServerConfig>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut tcp) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(connection, &mut tcp);
                let mut request = [0u8; 1024];
                if tls.read(&mut request).is_ok() {
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            });
        }
    });
    port
}

#[test]
fn ok_a_rustls_server_built_with_the_sdk_refuses_a_revoked_client_without_a_restart() {
    run_test(Backend::Sqlite, "sdk_rustls_crl", |server| {
        let host = "rustls.peer.internal";
        let workload = server_agent(server, host, "true");
        let mut agent = workload.spawn_agent();
        wait_for_files(&workload);
        let files = certmint::mtls::MtlsFiles::from_agent_dir(&workload.out);
        let config = certmint::mtls::server_config(&files, certmint::mtls::MtlsOptions::default())
            .expect("the SDK builds a server configuration from the agent's files");
        let port = serve_rustls(config);

        let clients = tempfile::tempdir().expect("client dir");
        let revoked = enroll_files(server, "revoked.rustls.peer.internal", &["client_auth"]);
        let kept = enroll_files(server, "kept.rustls.peer.internal", &["client_auth"]);
        let (revoked_cert, revoked_key) = client_files(clients.path(), "revoked", &revoked);
        let (kept_cert, kept_key) = client_files(clients.path(), "kept", &kept);
        let ca = workload.path("ca.pem");
        assert_eq!(
            curl(host, port, &ca, &revoked_cert, &revoked_key),
            Some(200)
        );
        assert_eq!(curl(host, port, &ca, &kept_cert, &kept_key), Some(200));

        admin(server, &["certificates", "revoke", &revoked.serial]).assert_exit(0);
        wait_until(
            "the rustls server refusing the revoked client",
            ENFORCED_WITHIN,
            || curl(host, port, &ca, &revoked_cert, &revoked_key).is_none(),
        );
        assert_eq!(
            curl(host, port, &ca, &kept_cert, &kept_key),
            Some(200),
            "the other client is still accepted"
        );

        // doctor, as each client, explains what the server does.
        let crl = workload.path("crl.pem");
        let doctor = |cert: &Path, key: &Path| {
            let address = format!("127.0.0.1:{port}");
            let (cert, key) = (cert.display().to_string(), key.display().to_string());
            let (ca, crl) = (ca.display().to_string(), crl.display().to_string());
            run_certmint(
                &[
                    "doctor",
                    "--connect",
                    &address,
                    "--server-name",
                    host,
                    "--json",
                    "--cert",
                    &cert,
                    "--key",
                    &key,
                    "--ca",
                    &ca,
                    "--crl",
                    &crl,
                ],
                &[],
                None,
            )
        };
        let report = doctor(&kept_cert, &kept_key);
        assert_eq!(report.code, Some(0), "{}{}", report.stdout, report.stderr);
        let report = doctor(&revoked_cert, &revoked_key);
        let verdict: serde_json::Value =
            serde_json::from_str(&report.stdout).expect("doctor --json prints one object");
        assert_eq!(verdict["ok"], false, "{verdict}");
        assert_eq!(verdict["layer"], "revocation", "{verdict}");
        assert_eq!(verdict["cause"], "client_certificate_revoked", "{verdict}");
        assert_eq!(
            report.code,
            Some(27),
            "the revocation layer's exit code: {verdict}"
        );

        // The OpenSSL snippet of docs/REVOCATION.md, on the same files:
        // `-CRL` reads only the first CRL of a file, so the CRLs go into the
        // file of trust anchors, which OpenSSL reads whole.
        let openssl_port = free_port();
        let out = |name: &str| workload.path(name).display().to_string();
        let trust = clients.path().join("ca-and-crls.pem");
        std::fs::write(
            &trust,
            format!(
                "{}{}",
                std::fs::read_to_string(workload.path("ca.pem")).expect("ca.pem"),
                std::fs::read_to_string(workload.path("crl.pem")).expect("crl.pem")
            ),
        )
        .expect("write ca-and-crls.pem");
        let openssl = Command::new("openssl")
            .args(["s_server", "-www", "-accept"])
            .arg(openssl_port.to_string())
            .args([
                "-cert",
                &out("cert.pem"),
                "-cert_chain",
                &out("cert.pem"),
                "-key",
                &out("key.pem"),
            ])
            .arg("-CAfile")
            .arg(&trust)
            .args(["-Verify", "2", "-crl_check", "-verify_return_error"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(clients.path().join("s_server.log")).expect("log file"))
            .stderr(std::fs::File::create(clients.path().join("s_server.err")).expect("log file"))
            .spawn()
            .expect("start openssl s_server");
        let _openssl = KillOnDrop { child: openssl };
        wait_until(
            "openssl s_server listening",
            Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", openssl_port)).is_ok(),
        );
        let s_server_log = || {
            format!(
                "{}{}",
                std::fs::read_to_string(clients.path().join("s_server.log")).unwrap_or_default(),
                std::fs::read_to_string(clients.path().join("s_server.err")).unwrap_or_default()
            )
        };
        assert_eq!(
            curl(host, openssl_port, &ca, &kept_cert, &kept_key),
            Some(200),
            "openssl s_server accepts the other client: {}",
            s_server_log()
        );
        assert_eq!(
            curl(host, openssl_port, &ca, &revoked_cert, &revoked_key),
            None,
            "openssl s_server -crl_check refuses the revoked client"
        );
        agent.stop();
    });
}
