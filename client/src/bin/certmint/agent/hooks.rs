//! Reload hooks: tell the workload that new files are in place.
//!
//! Invariants:
//! - A command runs without a shell (argv as given), with a timeout after
//!   which it is killed; its output goes to certmint's stderr so stdout
//!   stays machine-readable.
//! - A signal goes to the pid read from a pid file, through rustix's safe
//!   `kill(2)`; pid 0, negative pids (process groups) and our own pid are
//!   refused.
//! - A failed hook is reported, never fatal: the files are already in place
//!   and the next renewal runs the hook again.
//! - The hook environment names the files and the serial, never the key.
//! - Hooks never run twice at once: a certificate change and a `crl.pem`
//!   change (see [`crate::agent::crl`]) take turns, so the workload is
//!   never asked to reload while it is still reloading.

use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration as StdDuration;

use crate::agent::crl::CRL_FILE;
use crate::agent::output::{OutputDir, CA_FILE, CERT_FILE, KEY_FILE, META_FILE};

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// The signal name is not one certmint sends.
    #[error("signal {0:?} is not supported (use HUP, USR1, USR2, TERM, INT or QUIT)")]
    UnknownSignal(String),
    /// The command could not be started.
    #[error("cannot start reload command {program:?}: {source}")]
    Spawn {
        /// argv[0].
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The command ran but failed.
    #[error("reload command {program:?} failed: {status}")]
    Failed {
        /// argv[0].
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// The command did not finish in time and was killed.
    #[error("reload command {program:?} did not finish within {timeout:?}; killed")]
    TimedOut {
        /// argv[0].
        program: String,
        /// The limit.
        timeout: StdDuration,
    },
    /// The pid file is missing or does not hold a usable pid.
    #[error("pid file {}: {reason}", .path.display())]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `kill(2)` failed.
    #[error("cannot send SIG{signal} to pid {pid}: {source}")]
    Kill {
        /// Signal name.
        signal: &'static str,
        /// The pid.
        pid: i32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Signals a reload hook may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadSignal {
    /// SIGHUP (the usual "reload your config").
    Hup,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
    /// SIGTERM.
    Term,
    /// SIGINT.
    Int,
    /// SIGQUIT.
    Quit,
}

impl ReloadSignal {
    fn name(self) -> &'static str {
        match self {
            ReloadSignal::Hup => "HUP",
            ReloadSignal::Usr1 => "USR1",
            ReloadSignal::Usr2 => "USR2",
            ReloadSignal::Term => "TERM",
            ReloadSignal::Int => "INT",
            ReloadSignal::Quit => "QUIT",
        }
    }

    fn to_rustix(self) -> rustix::process::Signal {
        use rustix::process::Signal;
        match self {
            ReloadSignal::Hup => Signal::HUP,
            ReloadSignal::Usr1 => Signal::USR1,
            ReloadSignal::Usr2 => Signal::USR2,
            ReloadSignal::Term => Signal::TERM,
            ReloadSignal::Int => Signal::INT,
            ReloadSignal::Quit => Signal::QUIT,
        }
    }
}

impl FromStr for ReloadSignal {
    type Err = HookError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let upper = text.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        Ok(match name {
            "HUP" => ReloadSignal::Hup,
            "USR1" => ReloadSignal::Usr1,
            "USR2" => ReloadSignal::Usr2,
            "TERM" => ReloadSignal::Term,
            "INT" => ReloadSignal::Int,
            "QUIT" => ReloadSignal::Quit,
            _ => return Err(HookError::UnknownSignal(text.to_owned())),
        })
    }
}

/// The hooks to run after each successful write.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// argv of a reload command.
    pub command: Option<Vec<String>>,
    /// Its time limit.
    pub timeout: StdDuration,
    /// A signal and the pid file of its target.
    pub signal: Option<(ReloadSignal, PathBuf)>,
    /// Held while hooks run: clones share it, so runs take turns.
    pub turn: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Hooks {
    /// Runs every configured hook; logs each failure on one line. Returns
    /// false when any hook failed.
    pub async fn run(&self, out: &OutputDir, serial: &str) -> bool {
        let _turn = self.turn.lock().await;
        let mut ok = true;
        if let Some(argv) = &self.command {
            match run_command(argv, self.timeout, out, serial).await {
                Ok(()) => tracing::info!(hook.program = %argv[0], "reload command succeeded"),
                Err(error) => {
                    ok = false;
                    tracing::warn!("reload hook failed (files are in place): {error}");
                }
            }
        }
        if let Some((signal, pid_file)) = &self.signal {
            match send_signal(*signal, pid_file) {
                Ok(pid) => tracing::info!(hook.pid = pid, "sent SIG{}", signal.name()),
                Err(error) => {
                    ok = false;
                    tracing::warn!("reload hook failed (files are in place): {error}");
                }
            }
        }
        // Only real hooks are recorded: a run with none configured (an
        // `enroll` without a reload command) must not tell a later agent
        // that has hooks that they already ran.
        let configured = self.command.is_some() || self.signal.is_some();
        if ok && configured {
            if let Err(error) = out.record_reloaded(serial) {
                // The hooks did run; at worst a restart runs them again.
                tracing::warn!("cannot record that the reload hooks ran: {error}");
            }
        }
        ok
    }
}

/// Runs `argv` with the output files in its environment; kills it after
/// `timeout`. Polls instead of blocking so the async runtime (and signal
/// handling) keeps running meanwhile.
async fn run_command(
    argv: &[String],
    timeout: StdDuration,
    out: &OutputDir,
    serial: &str,
) -> Result<(), HookError> {
    let program = argv.first().cloned().unwrap_or_default();
    let mut command = Command::new(&program);
    command
        .args(&argv[1..])
        .env("CERTMINT_KEY_FILE", out.path(KEY_FILE))
        .env("CERTMINT_CERT_FILE", out.path(CERT_FILE))
        .env("CERTMINT_CA_FILE", out.path(CA_FILE))
        .env("CERTMINT_META_FILE", out.path(META_FILE))
        .env("CERTMINT_CRL_FILE", out.path(CRL_FILE))
        .env("CERTMINT_OUTPUT_DIR", out.root())
        .env("CERTMINT_SERIAL", serial)
        // Never hand the bootstrap token to a hook.
        .env_remove("CERTMINT_TOKEN")
        .stdin(Stdio::null())
        // Its own process group, so a timeout kills what a `sh -c` hook
        // started too, not only the shell.
        .process_group(0);
    // The hook's stdout joins our stderr: stdout carries `enroll`'s summary.
    if let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() {
        command.stdout(Stdio::from(stderr));
    }
    let mut child = command.spawn().map_err(|source| HookError::Spawn {
        program: program.clone(),
        source,
    })?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(HookError::Failed { program, status }),
            Ok(None) => {}
            Err(source) => return Err(HookError::Spawn { program, source }),
        }
        if tokio::time::Instant::now() >= deadline {
            let group = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            let _ = child.kill();
            let _ = child.wait();
            return Err(HookError::TimedOut { program, timeout });
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

/// Sends `signal` to the pid in `pid_file`; returns the pid.
fn send_signal(signal: ReloadSignal, pid_file: &Path) -> Result<i32, HookError> {
    let pid_error = |reason: String| HookError::PidFile {
        path: pid_file.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(pid_file).map_err(|error| pid_error(error.to_string()))?;
    let pid = parse_pid(&text).map_err(pid_error)?;
    let target = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| pid_error(format!("{pid} is not a process id")))?;
    rustix::process::kill_process(target, signal.to_rustix()).map_err(|error| HookError::Kill {
        signal: signal.name(),
        pid,
        source: error.into(),
    })?;
    Ok(pid)
}

/// The pid on the first line of a pid file: positive, and not our own
/// (signalling ourselves would only stop or confuse the agent).
fn parse_pid(text: &str) -> Result<i32, String> {
    let line = text.lines().next().unwrap_or("").trim();
    let pid: i32 = line
        .parse()
        .map_err(|_| format!("{line:?} is not a process id"))?;
    if pid <= 0 {
        return Err(format!("{pid} is not a single process"));
    }
    if u32::try_from(pid).is_ok_and(|pid| pid == std::process::id()) {
        return Err(format!("{pid} is certmint itself"));
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_signal_names() {
        assert_eq!("HUP".parse::<ReloadSignal>().unwrap(), ReloadSignal::Hup);
        assert_eq!(
            "sigusr1".parse::<ReloadSignal>().unwrap(),
            ReloadSignal::Usr1
        );
        assert!(matches!(
            "KILL".parse::<ReloadSignal>(),
            Err(HookError::UnknownSignal(_))
        ));
    }

    #[test]
    fn fail_pids_that_are_not_one_other_process() {
        assert_eq!(parse_pid("1234\n"), Ok(1234));
        for text in ["", "abc", "0", "-1", "-1234"] {
            assert!(parse_pid(text).is_err(), "{text:?}");
        }
        assert!(parse_pid(&std::process::id().to_string()).is_err());
    }

    fn hooks(argv: &[&str], timeout_ms: u64) -> Hooks {
        Hooks {
            command: Some(argv.iter().map(|s| (*s).to_owned()).collect()),
            timeout: StdDuration::from_millis(timeout_ms),
            signal: None,
            turn: Default::default(),
        }
    }

    #[tokio::test]
    async fn ok_command_sees_the_file_paths_and_serial() {
        let temp = tempfile::tempdir().unwrap();
        let out = OutputDir::open_or_create(temp.path(), None).unwrap();
        let marker = temp.path().join("hook.out");
        let script = format!(
            "printf '%s %s' \"$CERTMINT_SERIAL\" \"$CERTMINT_CERT_FILE\" > {}",
            marker.display()
        );
        assert!(hooks(&["sh", "-c", &script], 5_000).run(&out, "abcd").await);
        let written = std::fs::read_to_string(marker).unwrap();
        assert_eq!(written, format!("abcd {}", out.path(CERT_FILE).display()));
    }

    #[tokio::test]
    async fn fail_hung_hook_is_killed_with_what_it_started() {
        let temp = tempfile::tempdir().unwrap();
        let out = OutputDir::open_or_create(temp.path(), None).unwrap();
        let pid_file = temp.path().join("child.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let result = run_command(
            &["sh".into(), "-c".into(), script],
            StdDuration::from_millis(500),
            &out,
            "01",
        )
        .await;
        assert!(
            matches!(result, Err(HookError::TimedOut { .. })),
            "{result:?}"
        );
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_owned();
        // Gone, or a zombie waiting for a reaper: either way not running.
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit(") ").next().map(|rest| !rest.starts_with('Z')))
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + StdDuration::from_secs(3);
        while running() && std::time::Instant::now() < deadline {
            std::thread::sleep(StdDuration::from_millis(50));
        }
        assert!(
            !running(),
            "the hook's background sleep {pid} survived the timeout"
        );
    }

    #[tokio::test]
    async fn fail_commands_that_fail_hang_or_do_not_exist() {
        let temp = tempfile::tempdir().unwrap();
        let out = OutputDir::open_or_create(temp.path(), None).unwrap();
        assert!(!hooks(&["false"], 5_000).run(&out, "01").await);
        assert!(matches!(
            run_command(
                &["sleep".into(), "10".into()],
                StdDuration::from_millis(200),
                &out,
                "01"
            )
            .await,
            Err(HookError::TimedOut { .. })
        ));
        assert!(matches!(
            run_command(
                &["/nonexistent/reload".into()],
                StdDuration::from_secs(1),
                &out,
                "01"
            )
            .await,
            Err(HookError::Spawn { .. })
        ));
    }

    #[test]
    fn ok_signal_reaches_a_child_process() {
        let temp = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid_file = temp.path().join("child.pid");
        std::fs::write(&pid_file, format!("{}\n", child.id())).unwrap();
        send_signal(ReloadSignal::Term, &pid_file).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(15));
        assert!(matches!(
            send_signal(ReloadSignal::Hup, &temp.path().join("missing.pid")),
            Err(HookError::PidFile { .. })
        ));
    }
}
