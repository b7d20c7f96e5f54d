//! Files the set-up commands write (config, token-signing key, root
//! certificate, CSR): their final mode from the first byte, never over an
//! existing file, and either complete or absent after a crash.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Who may read a file [`create`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    /// Only the server's user (0600): secrets, and the config, whose
    /// `database.url` may hold a password.
    Owner,
    /// Everyone (0644): public material such as certificates and CSRs.
    Everyone,
}

/// Creates `path` holding `bytes`, readable by `readers`; fails with
/// `AlreadyExists` if it exists. The bytes go to a temporary file beside
/// it, synced, then linked into place (a link never replaces a file) and
/// the directory synced: an interrupted call leaves either no file or the
/// whole one, never a truncated file a rerun would keep.
pub fn create(path: &Path, bytes: &[u8], readers: Readers) -> std::io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file path"))?;
    let mut suffix = [0u8; 8];
    crate::random::fill(&mut suffix).map_err(|_| std::io::Error::other("no randomness"))?;
    let temporary = directory.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(suffix)
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(match readers {
                Readers::Owner => 0o600,
                Readers::Everyone => 0o644,
            })
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::hard_link(&temporary, path)
    })();
    let removed = std::fs::remove_file(&temporary);
    written?;
    removed?;
    std::fs::File::open(directory)?.sync_all()
}

/// Writes public `bytes` to `path` once: creates it, or leaves it if it
/// already holds exactly `bytes` (a rerun of the same command). A file
/// holding anything else is never replaced: the error names `what` and
/// the path, so the operator moves it away or picks another path.
pub fn create_or_confirm(path: &Path, bytes: &[u8], what: &str) -> std::io::Result<()> {
    match create(path, bytes, Readers::Everyone) {
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read(path)? == bytes {
                Ok(())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and does not hold this {what}; it is left alone: move it away or choose another path",
                        path.display()
                    ),
                ))
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn creates_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        super::create(&path, b"one", super::Readers::Owner).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = super::create(&path, b"two", super::Readers::Owner).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["secret"], "no temporary file is left behind");
    }

    #[test]
    fn public_files_are_0644_and_confirmed_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuing.csr");
        super::create_or_confirm(&path, b"csr", "CSR").unwrap();
        // 0644 less the umask: readable by the owner, never writable or
        // executable by anyone else.
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o600, 0o600);
        assert_eq!(mode & 0o133, 0);
        super::create_or_confirm(&path, b"csr", "CSR").expect("same bytes: a rerun");
        let error = super::create_or_confirm(&path, b"other", "CSR").unwrap_err();
        assert!(
            error.to_string().contains("does not hold this CSR"),
            "{error}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"csr");
    }
}
