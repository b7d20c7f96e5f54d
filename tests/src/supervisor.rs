//! The `sh` supervisor that owns a `serve` process's lifetime (see the crate
//! docs): it starts and stops `serve` on request and, when its stdin pipe
//! closes for any reason, stops the server, drops the PostgreSQL database
//! and removes the directory.
//!
//! Invariant: nothing but closing the pipe ends the supervisor, so a test
//! process that dies (even by SIGKILL) leaks no server and no database.

use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::TestDatabase;
use crate::process::{env_flag, process_alive, read_from, ChildEnv, STARTUP_TIMEOUT};

/// Stops the server when dropped (see the module docs).
pub(crate) struct Supervisor {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Supervisor {
    pub(crate) fn send(&mut self, command: &str) {
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

pub(crate) fn spawn_supervisor(
    binary: &Path,
    env: &ChildEnv,
    config: &Path,
    log: &Path,
    dir: &Path,
    database: Option<&TestDatabase>,
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
        .env("CERTMINT_DROP_DB", database.map_or("", TestDatabase::name))
        .env(
            "CERTMINT_PG_ADMIN_URL",
            database.map_or("", TestDatabase::admin_url),
        )
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().expect("spawn the server supervisor (sh)");
    let stdin = child.stdin.take();
    Supervisor { child, stdin }
}

pub(crate) fn wait_for_pid_file(pid_file: &Path, log: &Path) -> u32 {
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

pub(crate) fn wait_for_health(
    client: &reqwest::blocking::Client,
    base_url: &str,
    pid: u32,
    log: &Path,
) {
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
