//! Process plumbing: where the built binaries are, the environment every
//! child gets ([`ChildEnv`]), and how a finished child is described
//! ([`CommandOutput`]).
//!
//! Invariant: the SoftHSM2/hsm-sim configuration and the PINs go into the
//! *child's* environment only; this process never calls `set_var`, so test
//! threads cannot see each other's settings.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::server::Skip;

/// How long a server may take to answer `/healthz` after `serve` starts.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A finished child process: how it ended and what it printed. The one
/// description of a finished `certmint-server`, `certmint`, `hsm-sim` or
/// helper run, whichever module started it.
///
/// `code` and `text` are derived from `status` and the two streams when
/// the value is made, so a test reads whichever it needs.
#[derive(Debug)]
pub struct CommandOutput {
    /// The command line, for failure messages.
    pub command: String,
    /// How it exited; `None` when it was still running at its deadline and
    /// the harness killed it.
    pub status: Option<ExitStatus>,
    /// The exit code; `None` when it was killed (by a signal, or at its
    /// deadline).
    pub code: Option<i32>,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// stdout, then stderr.
    pub text: String,
}

impl CommandOutput {
    /// Runs `command` to completion; panics when it cannot be started.
    pub(crate) fn of(command: &mut Command, what: &str) -> CommandOutput {
        let output = command
            .output()
            .unwrap_or_else(|error| panic!("run {what}: {error}"));
        CommandOutput::from_output(what, &output)
    }

    /// Describes a process that ran to completion.
    pub(crate) fn from_output(what: &str, output: &Output) -> CommandOutput {
        CommandOutput::new(
            what,
            Some(output.status),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Describes a process from its parts; `status` is `None` when it was
    /// killed at its deadline.
    pub(crate) fn new(
        what: &str,
        status: Option<ExitStatus>,
        stdout: String,
        stderr: String,
    ) -> CommandOutput {
        CommandOutput {
            command: what.to_owned(),
            status,
            code: status.and_then(|status| status.code()),
            text: format!("{stdout}{stderr}"),
            stdout,
            stderr,
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

    /// Asserts the exit code; returns `self` for chaining.
    #[track_caller]
    pub fn assert_exit(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "{}\n  expected exit {code}\n  stdout:\n{}\n  stderr:\n{}",
            self.command,
            self.stdout,
            self.stderr
        );
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "{}: stdout is not JSON ({error}):\n{}",
                self.command, self.stdout
            )
        })
    }

    /// The problem code of an `error: <code>: <detail>` line on stderr.
    pub fn error_code(&self) -> Option<&str> {
        self.stderr
            .lines()
            .find_map(|line| line.strip_prefix("error: "))
            .and_then(|rest| rest.split(": ").next())
    }
}

/// Whether a test that acts as other users (which needs root) must skip:
/// `false` as root; otherwise `true` after printing why, or a panic when
/// `CERTMINT_REQUIRE_ROOT=1` (CI runs as root, so there a skip would hide
/// a test that never ran).
#[track_caller]
pub fn skip_unless_root(test: &str) -> bool {
    match root_check(running_as_root(), env_flag("CERTMINT_REQUIRE_ROOT")) {
        Ok(()) => false,
        Err(Skip(reason)) => {
            eprintln!("note: skipping {test}: {reason}");
            true
        }
    }
}

/// The decision behind [`skip_unless_root`].
#[track_caller]
fn root_check(is_root: bool, required: bool) -> Result<(), Skip> {
    if is_root {
        return Ok(());
    }
    let reason = "not running as root, and acting as another user needs root";
    if required {
        panic!("{reason}; CERTMINT_REQUIRE_ROOT=1 makes that a failure");
    }
    Err(Skip(reason.to_owned()))
}

/// Whether this process's effective uid is 0 (read from its status file:
/// the crate forbids `unsafe`, which `geteuid` needs without a library).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// The environment every child gets: its own SoftHSM2 config and the PIN.
pub(crate) struct ChildEnv {
    pub(crate) softhsm_conf: PathBuf,
    pub(crate) hsm_pin: String,
}

impl ChildEnv {
    /// hsm-sim's state directory: `hsm-sim/` beside `softhsm2.conf`, in the
    /// server's own temporary directory.
    pub(crate) fn hsm_sim_dir(&self) -> PathBuf {
        self.softhsm_conf.with_file_name("hsm-sim")
    }

    pub(crate) fn command(&self, program: &Path) -> Command {
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
pub(crate) fn built_artifact(name: &str) -> PathBuf {
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

/// True while `pid` runs (a zombie counts as exited).
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
    }
}

pub(crate) fn free_port() -> u16 {
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

pub(crate) fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| value == "1" || value.eq_ignore_ascii_case("true"))
}

pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("<no log at {}>", path.display());
    };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("<unreadable log at {}>", path.display());
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_root_runs_the_test() {
        assert!(root_check(true, false).is_ok());
        assert!(root_check(true, true).is_ok());
    }

    #[test]
    fn ok_not_root_skips_when_root_is_not_required() {
        assert!(root_check(false, false).is_err());
    }

    #[test]
    #[should_panic(expected = "CERTMINT_REQUIRE_ROOT=1")]
    fn fail_not_root_when_root_is_required() {
        let _ = root_check(false, true);
    }
}
