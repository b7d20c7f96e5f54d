//! The PKCS#11 token a test server's CA lives in ([`Token`]) and what the
//! harness reads from it behind the server's back (`pkcs11-tool` listings).
//!
//! Invariant: the harness never changes a token's objects itself; it only
//! lists them, so a test sees what the server made.

use std::path::Path;

use crate::process::ChildEnv;

/// Default SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

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
pub(crate) fn list_private_keys(env: &ChildEnv, module: &Path, pin: &str) -> String {
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
