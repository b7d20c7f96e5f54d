//! A second `certmint-server serve` beside a [`TestServer`]: [`Replica`],
//! started by [`TestServer::start_replica`], runs on the same database and
//! the same HSM token with its own HTTPS and CRL listener ports, as replicas
//! behind a load balancer do.
//!
//! Invariants: the replica's config is the server's with only
//! `server.listen` and `crl.listen` changed and `crl.url` pinned to the
//! server's CRL listener, so both write the same distribution points and
//! accept the same admin tokens (same `public_url`). Its config sits beside
//! the server's (relative paths resolve alike); its pid file and log live in
//! a directory of its own inside the server's, which its supervisor removes.
//! The supervisor is handed no database: the server's drops it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use crate::http::{Auth, RequestBody, Response};
use crate::process::{free_port, random_hex, read_from, server_binary};
use crate::supervisor::{spawn_supervisor, wait_for_health, wait_for_pid_file, Supervisor};
use crate::{assert_well_formed, TestServer};

/// Another `serve` process on the same database and token; stopped (its
/// directory removed) when dropped.
pub struct Replica<'a> {
    server: &'a TestServer,
    base_url: String,
    crl_url: String,
    log_path: PathBuf,
    /// Dropped last: stopping the replica removes its directory.
    _supervisor: Mutex<Supervisor>,
}

impl std::fmt::Debug for Replica<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("base_url", &self.base_url)
            .field("crl_url", &self.crl_url)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Starts another replica of this server (see [`Replica`]) and waits for
    /// its `/healthz`.
    pub fn start_replica(&self) -> Replica<'_> {
        let port = free_port();
        let crl_port = free_port();
        let name = format!("replica-{}", random_hex(3));
        let dir = self.dir().join(&name);
        std::fs::create_dir(&dir).expect("create the replica's directory");
        let config = std::fs::read_to_string(&self.config_path).expect("read the server's config");
        let config_path = self.dir().join(format!("{name}.toml"));
        std::fs::write(&config_path, replica_config(&config, self, port, crl_port))
            .expect("write the replica's config");
        let log_path = dir.join("server.log");
        let supervisor = spawn_supervisor(
            &server_binary(),
            &self.child_env(),
            &config_path,
            &log_path,
            &dir,
            None,
            if self.options().log_format_json {
                "json"
            } else {
                "text"
            },
        );
        let base_url = format!("https://localhost:{port}");
        let pid = wait_for_pid_file(&dir.join("server.pid"), &log_path);
        let client = crate::http::https_client(self.root_pem());
        wait_for_health(&client, &base_url, pid, &log_path);
        Replica {
            server: self,
            base_url,
            crl_url: format!("http://127.0.0.1:{crl_port}"),
            log_path,
            _supervisor: Mutex::new(supervisor),
        }
    }
}

/// The server's config with the replica's listeners; `crl.url` pinned to
/// the server's CRL listener.
fn replica_config(config: &str, server: &TestServer, port: u16, crl_port: u16) -> String {
    let server_port = server
        .base_url()
        .rsplit(':')
        .next()
        .expect("base URL with a port");
    let server_crl = server
        .crl_url()
        .strip_prefix("http://")
        .expect("http CRL URL");
    let https_listen = format!("listen = \"127.0.0.1:{server_port}\"\n");
    let crl_listen = format!("listen = \"{server_crl}\"\n");
    assert!(
        config.contains(&https_listen) && config.contains(&crl_listen),
        "the server's config names its listeners as `init` wrote them:\n{config}"
    );
    assert!(
        !config
            .lines()
            .any(|line| line.trim_start().starts_with("url = \"http")),
        "the server's config sets no crl.url of its own"
    );
    config
        .replacen(
            &https_listen,
            &format!("listen = \"127.0.0.1:{port}\"\n"),
            1,
        )
        .replacen(
            &crl_listen,
            &format!(
                "listen = \"127.0.0.1:{crl_port}\"\nurl = \"{}\"\n",
                server.crl_url()
            ),
            1,
        )
}

impl Replica<'_> {
    /// `https://localhost:<port>` of this replica.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `http://127.0.0.1:<port>` of this replica's CRL listener.
    pub fn crl_url(&self) -> &str {
        &self.crl_url
    }

    /// This replica's log so far, from byte `offset`.
    pub fn log_since(&self, offset: u64) -> String {
        read_from(&self.log_path, offset)
    }

    /// The replica's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `POST` JSON as admin, to this replica; checked as
    /// [`TestServer::request`] checks.
    #[track_caller]
    pub fn admin_post(&self, path: &str, body: &Value) -> Response {
        let response = self.server.request_at(
            &self.base_url,
            Auth::Admin,
            "POST",
            path,
            Some(RequestBody::Json(body.clone())),
        );
        assert_well_formed(&response);
        response
    }
}
