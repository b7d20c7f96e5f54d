//! Reading and parsing the four files, one at a time, into what rustls
//! takes; and the metadata stamp that says a file changed.
//!
//! Invariants:
//! - Parsing is all-or-nothing per file: a file yields its whole contents
//!   or an [`InvalidFile`] saying why, never a prefix of it.
//! - Text that is not blank but holds none of the expected PEM blocks is an
//!   error, not an empty set: garbage in `crl.pem` must never read as "no
//!   CRL".
//! - Nothing read from the key file reaches an error message.

use std::io::{self, Read as _};
use std::path::Path;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use x509_cert::der::Decode as _;

/// Files larger than this are refused rather than read into memory: CRLs
/// are sharded, so even a large fleet's `crl.pem` stays far below it.
pub(super) const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// What is wrong with a file that was read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidFile {
    /// The PEM framing is broken (for example a block cut short).
    #[error("unreadable PEM: {0}")]
    Pem(String),
    /// No `CERTIFICATE` block.
    #[error("holds no certificate")]
    NoCertificate,
    /// The first certificate does not parse, or rustls cannot use it.
    #[error("the certificate is not usable: {0}")]
    Certificate(String),
    /// No private key block.
    #[error("holds no private key")]
    NoPrivateKey,
    /// The private key does not parse or is of a type rustls cannot use.
    #[error("the private key is not usable: {0}")]
    PrivateKey(String),
    /// A certificate in the roots file cannot be a trust anchor.
    #[error("certificate {index} is not a usable trust anchor: {reason}")]
    TrustAnchor {
        /// Its position in the file, from 0.
        index: usize,
        /// webpki's reason.
        reason: String,
    },
    /// Not blank, yet no `X509 CRL` block.
    #[error("holds no CRL")]
    NoCrl,
    /// A CRL does not parse (or uses a feature webpki refuses, such as an
    /// indirect CRL).
    #[error("CRL {index} is not usable: {reason}")]
    Crl {
        /// Its position in the file, from 0.
        index: usize,
        /// webpki's reason.
        reason: String,
    },
    /// Text follows the last PEM block: the file was most likely cut short
    /// in the middle of the next one's first line.
    #[error("text after the last PEM block (cut short?)")]
    TrailingText,
    /// Larger than the limit (64 MiB).
    #[error("larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
}

/// A file's metadata, enough to notice that it was replaced (rename gives a
/// new inode) or rewritten in place (length or mtime change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stamp {
    /// No such file (or no file configured).
    Absent,
    /// `stat` failed for another reason.
    Unreadable(io::ErrorKind),
    /// The file's identity and size.
    Present {
        device: u64,
        inode: u64,
        len: u64,
        modified: Option<SystemTime>,
    },
}

impl Stamp {
    /// The stamp of `path` now, following symlinks (a Kubernetes secret
    /// volume swaps a symlinked directory).
    pub(super) fn of(path: Option<&Path>) -> Self {
        let Some(path) = path else {
            return Self::Absent;
        };
        match std::fs::metadata(path) {
            Ok(metadata) => Self::from_metadata(&metadata),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Self::Absent,
            Err(error) => Self::Unreadable(error.kind()),
        }
    }

    #[cfg(unix)]
    fn from_metadata(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self::Present {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }

    #[cfg(not(unix))]
    fn from_metadata(metadata: &std::fs::Metadata) -> Self {
        Self::Present {
            device: 0,
            inode: 0,
            len: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

/// Why a file could not be turned into what rustls takes.
#[derive(Debug)]
pub(super) enum FileError {
    Read(io::Error),
    Invalid(InvalidFile),
}

impl From<InvalidFile> for FileError {
    fn from(invalid: InvalidFile) -> Self {
        Self::Invalid(invalid)
    }
}

/// The whole file, refused past [`MAX_FILE_BYTES`].
pub(super) fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    let file = std::fs::File::open(path).map_err(FileError::Read)?;
    let mut bytes = Vec::new();
    // One byte past the limit tells a file at the limit from a larger one.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(FileError::Read)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(InvalidFile::TooLarge {
            limit: MAX_FILE_BYTES,
        }
        .into());
    }
    Ok(bytes)
}

/// Refuses text after the last `-----END` line. Text before a block is
/// allowed (RFC 7468 explanatory text); text after the last one is what a
/// file cut inside a `-----BEGIN` line leaves, which the PEM parser would
/// silently skip, losing that block.
fn complete(pem: &[u8]) -> Result<(), InvalidFile> {
    let marker = b"-----END ";
    let Some(last_end) = pem
        .windows(marker.len())
        .rposition(|window| window == marker)
    else {
        return Ok(());
    };
    let rest = &pem[last_end..];
    let after_line = rest
        .iter()
        .position(|byte| *byte == b'\n')
        .map_or(&[][..], |newline| &rest[newline..]);
    if after_line.iter().all(u8::is_ascii_whitespace) {
        Ok(())
    } else {
        Err(InvalidFile::TrailingText)
    }
}

/// Every certificate, in order; at least one.
pub(super) fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, InvalidFile> {
    complete(pem)?;
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| InvalidFile::Pem(error.to_string()))?;
    if certificates.is_empty() {
        return Err(InvalidFile::NoCertificate);
    }
    Ok(certificates)
}

/// The trusted roots: at least one certificate, each a usable anchor.
pub(super) fn roots(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, InvalidFile> {
    let roots = certificates(pem)?;
    for (index, root) in roots.iter().enumerate() {
        webpki::anchor_from_trusted_cert(root).map_err(|error| InvalidFile::TrustAnchor {
            index,
            reason: error.to_string(),
        })?;
    }
    Ok(roots)
}

/// The first private key.
pub(super) fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, InvalidFile> {
    complete(pem)?;
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(InvalidFile::NoPrivateKey),
        // The PEM error names a line only for a BEGIN marker, never key
        // material, so it may be shown.
        Err(error) => Err(InvalidFile::Pem(error.to_string())),
    }
}

/// Every CRL, in order, each checked by webpki as it will be used. A blank
/// file gives none; other text without a CRL is refused.
pub(super) fn crls(pem: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, InvalidFile> {
    complete(pem)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| InvalidFile::Pem(error.to_string()))?;
    if crls.is_empty() && !pem.iter().all(u8::is_ascii_whitespace) {
        return Err(InvalidFile::NoCrl);
    }
    for (index, crl) in crls.iter().enumerate() {
        webpki::OwnedCertRevocationList::from_der(crl.as_ref()).map_err(|error| {
            InvalidFile::Crl {
                index,
                reason: error.to_string(),
            }
        })?;
    }
    Ok(crls)
}

/// The issuers (RFC 4514) and nextUpdate of the CRLs that are past it at
/// `now`: they will refuse every certificate they cover when expiry is
/// enforced.
pub(super) fn expired_crls(
    crls: &[CertificateRevocationListDer<'static>],
    now: UnixTime,
) -> Vec<(String, time::OffsetDateTime)> {
    crls.iter()
        .filter_map(|crl| <x509_cert::crl::CertificateList>::from_der(crl.as_ref()).ok())
        .filter_map(|list| {
            let next_update = list.tbs_cert_list.next_update?.to_unix_duration().as_secs();
            (next_update <= now.as_secs()).then(|| {
                let at = time::OffsetDateTime::from_unix_timestamp(
                    i64::try_from(next_update).unwrap_or(i64::MAX),
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                (list.tbs_cert_list.issuer.to_string(), at)
            })
        })
        .collect()
}

/// Why a certificate and key do not make an identity.
#[derive(Debug)]
pub(super) enum IdentityError {
    /// In the certificate file.
    Certificate(InvalidFile),
    /// In the key file.
    Key(InvalidFile),
    /// Both are fine, but the key is not the certificate's.
    Mismatch,
}

/// The identity rustls serves, when `key` belongs to the leaf of `chain`.
pub(super) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, IdentityError> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| IdentityError::Key(InvalidFile::PrivateKey(error.to_string())))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the key type cannot report its public key; rustls itself
        // lets that pass, and a wrong key then fails its first handshake.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(IdentityError::Mismatch),
        Err(error) => Err(IdentityError::Certificate(InvalidFile::Certificate(
            error.to_string(),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtls::tests::{fresh, Pki};

    #[test]
    fn fail_garbage_crl_file_is_not_an_empty_set() {
        assert_eq!(crls(b"this is not PEM\n"), Err(InvalidFile::NoCrl));
        // A certificate where CRLs belong is no CRL either.
        let pki = Pki::new();
        assert_eq!(crls(pki.root.pem().as_bytes()), Err(InvalidFile::NoCrl));
    }

    #[test]
    fn ok_blank_crl_file_holds_none() {
        assert_eq!(crls(b""), Ok(Vec::new()));
        assert_eq!(crls(b" \n\t\n"), Ok(Vec::new()));
    }

    #[test]
    fn fail_crl_file_cut_short() {
        let pki = Pki::new();
        let pem = pki.root_crl(false).pem().expect("pem");
        let cut = &pem.as_bytes()[..pem.len() - 40];
        assert!(
            matches!(crls(cut), Err(InvalidFile::Pem(_))),
            "{:?}",
            crls(cut)
        );
    }

    #[test]
    fn fail_file_cut_inside_a_begin_line() {
        let pki = Pki::new();
        let pem = pki.crl_pem(&[]);
        let second = pem.rfind("-----BEGIN").expect("two blocks");
        let cut = &pem.as_bytes()[..second + "-----BEG".len()];
        assert_eq!(crls(cut), Err(InvalidFile::TrailingText));
        let leaf = pki.leaf("alice.test");
        let chain = &leaf.chain_pem;
        let cut = &chain.as_bytes()[..chain.rfind("-----BEGIN").expect("root") + 5];
        assert_eq!(certificates(cut), Err(InvalidFile::TrailingText));
        // Explanatory text before a block is fine.
        let annotated = format!("issuer: certmint test root\n{pem}");
        assert_eq!(crls(annotated.as_bytes()).map(|crls| crls.len()), Ok(2));
    }

    #[test]
    fn fail_crl_block_that_is_not_a_crl() {
        let text = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
        assert!(
            matches!(
                crls(text.as_bytes()),
                Err(InvalidFile::Crl { index: 0, .. })
            ),
            "{:?}",
            crls(text.as_bytes())
        );
    }

    #[test]
    fn ok_every_crl_in_order() {
        let pki = Pki::new();
        let (root, issuing) = (pki.root_crl(false), pki.issuing_crl(&[], fresh()));
        let pem = format!(
            "{}{}",
            root.pem().expect("pem"),
            issuing.pem().expect("pem")
        );
        let parsed = crls(pem.as_bytes()).expect("parses");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].as_ref(), root.der().as_ref());
        assert_eq!(parsed[1].as_ref(), issuing.der().as_ref());
    }

    #[test]
    fn fail_roots_and_keys_without_their_blocks() {
        assert_eq!(roots(b"junk"), Err(InvalidFile::NoCertificate));
        assert_eq!(private_key(b"junk"), Err(InvalidFile::NoPrivateKey));
    }

    #[test]
    fn fail_key_of_another_certificate() {
        let pki = Pki::new();
        let alice = pki.leaf("alice.test");
        let bob = pki.leaf("bob.test");
        let chain = certificates(alice.chain_pem.as_bytes()).expect("chain");
        let key = private_key(bob.key_pem.as_bytes()).expect("key");
        let error = certified_key(chain, key, &rustls::crypto::ring::default_provider())
            .expect_err("mismatch");
        assert!(matches!(error, IdentityError::Mismatch), "{error:?}");
    }

    #[test]
    fn ok_stamp_changes_when_a_file_is_replaced_by_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crl.pem");
        assert_eq!(Stamp::of(Some(&path)), Stamp::Absent);
        assert_eq!(Stamp::of(None), Stamp::Absent);
        std::fs::write(&path, "one").expect("write");
        let first = Stamp::of(Some(&path));
        assert!(matches!(first, Stamp::Present { .. }));
        // Same length, written within the same mtime tick: only the inode
        // tells the two apart.
        let temporary = dir.path().join(".crl.pem.tmp");
        std::fs::write(&temporary, "two").expect("write");
        std::fs::rename(&temporary, &path).expect("rename");
        assert_ne!(Stamp::of(Some(&path)), first);
    }

    #[test]
    fn fail_file_over_the_size_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.pem");
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(MAX_FILE_BYTES + 1).expect("sparse file");
        assert!(matches!(
            read(&path),
            Err(FileError::Invalid(InvalidFile::TooLarge { .. }))
        ));
    }
}
