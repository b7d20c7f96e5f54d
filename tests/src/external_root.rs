//! External-root mode: a CA whose issuing key waits for an offline root
//! ([`PendingCa`]), and the offline root the test plays with `openssl`
//! ([`OfflineRoot`]).
//!
//! Invariant: the offline root's keys live in their own temporary directory,
//! never on the server's token or in its directory, as an offline root's
//! would.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::builder::{parse_root_fingerprint, Prepared};
use crate::hsm::list_private_keys;
use crate::process::{random_hex, read_from, CommandOutput, STARTUP_TIMEOUT};
use crate::server::{Backend, TestServer};

/// An external-root CA after `init --external-root-csr`: the issuing key is
/// on the token, its CSR awaits an offline root. Dropping it removes the
/// directory and the database.
pub struct PendingCa {
    pub(crate) prepared: Prepared,
    pub(crate) init_output: String,
    pub(crate) csr_pem: String,
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
        // serve wrote both streams into one log: it is `stdout` (and `text`).
        CommandOutput::new(
            "certmint-server serve",
            status,
            read_from(&log_path, 0),
            String::new(),
        )
    }

    /// Runs `sql` on this CA's PostgreSQL database (`psql -At`) and
    /// returns its output; `None` on SQLite, which the harness does not
    /// read behind the server's back.
    pub fn postgres_query(&self, sql: &str) -> Option<String> {
        let database = self.prepared.database.as_ref()?;
        let output = Command::new("psql")
            .arg(database.url())
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
