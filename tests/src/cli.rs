//! Helpers for driving the `certmint` CLI (`admin`, `status`) in tests.
//!
//! Every admin run goes through [`admin_as`], which asserts that neither
//! output stream contains the admin token it was given: "never print the
//! admin token" is checked on every command, not in one test. The token is
//! passed in the child's environment (`CERTMINT_ADMIN_TOKEN`), never in
//! argv, as an operator would.
//!
//! [`write_agent_dir`] lays files out the way the agent does (stable
//! symlinks into `..data`, a generation directory), so `status` is tested
//! on the layout it will meet.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::process::CommandOutput;
use crate::{certmint_binary, der_to_pem, pem_chain, TestServer};

/// Runs `certmint <args>` with `env` added to a clean-ish environment (no
/// inherited `CERTMINT_*` variables, so the developer's shell cannot change
/// what a test means) and `stdin` on its standard input.
pub fn run_certmint(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> CommandOutput {
    let mut command = Command::new(certmint_binary());
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("CERTMINT_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let described = format!("certmint {}", args.join(" "));
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {described}: {error}"));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write as _;
        pipe.write_all(text.as_bytes())
            .unwrap_or_else(|error| panic!("{described}: write stdin: {error}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|error| panic!("{described}: {error}"));
    CommandOutput::from_output(&described, &output)
}

/// `certmint admin --server … --root-fingerprint … <args>` with `token` in
/// `CERTMINT_ADMIN_TOKEN`; asserts the token appears in no output.
#[track_caller]
pub fn admin_as(server: &TestServer, token: &str, args: &[&str]) -> CommandOutput {
    admin_with(server, token, args, None)
}

/// [`admin_as`] with the admin role's token.
#[track_caller]
pub fn admin(server: &TestServer, args: &[&str]) -> CommandOutput {
    admin_as(server, server.admin_token(), args)
}

/// [`admin_as`] with `stdin` fed to the process.
#[track_caller]
pub fn admin_with(
    server: &TestServer,
    token: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> CommandOutput {
    let mut full = vec![
        "admin",
        "--server",
        server.base_url(),
        "--root-fingerprint",
        server.root_fingerprint(),
    ];
    full.extend_from_slice(args);
    let output = run_certmint(&full, &[("CERTMINT_ADMIN_TOKEN", token)], stdin);
    assert!(
        !output.stdout.contains(token) && !output.stderr.contains(token),
        "{} printed the admin token",
        output.command
    );
    output
}

/// What an enrollment left for the workload.
#[derive(Debug, Clone)]
pub struct EnrolledFiles {
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Leaf, then the issuing intermediate (what the agent writes to cert.pem).
    pub cert_pem: String,
    /// The root (what the agent writes to ca.pem).
    pub ca_pem: String,
    /// The serial the server answered with.
    pub serial: String,
    /// The 201 body.
    pub bundle: Value,
}

/// Creates a policy allowing `dns` with `eku`, mints a token for it,
/// enrolls an ec-p256 key through the harness and returns the files.
#[track_caller]
pub fn enroll_files(server: &TestServer, dns: &str, eku: &[&str]) -> EnrolledFiles {
    let name = server.unique("status");
    let mut policy = crate::policy_json(&name, &[dns], &[], &[]);
    policy["extended_key_usage"] = serde_json::json!(eku);
    server.create_policy(&policy);
    let token = server.mint_token(&name, &crate::identity(&[dns], &[], &[]), 1);
    let (csr, key_pem) = crate::make_csr("ec-p256", &[dns], &[], &[]);
    let response = server.enroll(&csr, &token.token);
    response.assert_status(201);
    let bundle = response.body.clone();
    let text = |field: &str| {
        bundle
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("enrollment answer without {field}: {bundle}"))
            .to_owned()
    };
    let chain = pem_chain(&text("chain_pem"));
    let (root, intermediates) = chain.split_last().expect("a chain with a root");
    let mut cert_pem = text("certificate_pem");
    for intermediate in intermediates {
        cert_pem.push_str(&der_to_pem("CERTIFICATE", intermediate));
    }
    EnrolledFiles {
        key_pem,
        cert_pem,
        ca_pem: der_to_pem("CERTIFICATE", root),
        serial: text("serial"),
        bundle,
    }
}

/// Writes `files` under `dir` as the agent does: a generation directory,
/// `..data` pointing at it, `key.pem`/`cert.pem`/`ca.pem` pointing into
/// `..data`, the key 0600, and `..data/meta.json` when `meta` is given.
#[track_caller]
pub fn write_agent_dir(dir: &Path, files: &EnrolledFiles, meta: Option<&Value>) {
    use std::os::unix::fs::{symlink, PermissionsExt as _};
    let generation = dir.join("..gen-1");
    std::fs::create_dir_all(&generation).expect("create the generation directory");
    let write = |name: &str, text: &str, mode: u32| {
        let path = generation.join(name);
        std::fs::write(&path, text).expect("write a file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .expect("chmod a file");
    };
    write("key.pem", &files.key_pem, 0o600);
    write("cert.pem", &files.cert_pem, 0o644);
    write("ca.pem", &files.ca_pem, 0o644);
    if let Some(meta) = meta {
        write("meta.json", &meta.to_string(), 0o644);
    }
    symlink("..gen-1", dir.join("..data")).expect("link ..data");
    for name in ["key.pem", "cert.pem", "ca.pem"] {
        symlink(format!("..data/{name}"), dir.join(name)).expect("link a file");
    }
}

/// Writes `files` as plain files `key.pem` (0600), `cert.pem`, `ca.pem`.
#[track_caller]
pub fn write_plain_files(dir: &Path, files: &EnrolledFiles) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(dir.join("key.pem"), &files.key_pem).expect("write key.pem");
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod key.pem");
    std::fs::write(dir.join("cert.pem"), &files.cert_pem).expect("write cert.pem");
    std::fs::write(dir.join("ca.pem"), &files.ca_pem).expect("write ca.pem");
}

/// The meta.json the agent writes for an enrollment answer.
pub fn meta_for(files: &EnrolledFiles) -> Value {
    let field = |name: &str| files.bundle.get(name).cloned().unwrap_or(Value::Null);
    serde_json::json!({
        "serial": field("serial"),
        "not_before": field("not_before"),
        "not_after": field("not_after"),
        "renew_after": field("renew_after"),
        "policy": field("policy"),
        "policy_version": field("policy_version"),
    })
}

/// The `status` text report's line for `layer`: `(status word, detail)`.
pub fn layer_line<'a>(stdout: &'a str, layer: &str) -> Option<(&'a str, &'a str)> {
    stdout.lines().find_map(|line| {
        let status = line.split_whitespace().next()?;
        let rest = line[status.len()..].trim_start();
        let name = rest.split_whitespace().next()?;
        (name == layer).then(|| (status, rest[name.len()..].trim_start()))
    })
}
