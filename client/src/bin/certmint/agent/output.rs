//! The output directory: key, certificate chain, CA and metadata of one
//! workload, replaced atomically as a set.
//!
//! Layout (kubelet `AtomicWriter` style):
//!
//! ```text
//! <out>/                      0700, created by certmint when missing
//!   ..<nanos>-<serial>/       one generation (0700): key.pem (0600, PKCS#8),
//!                             cert.pem (leaf then intermediates), ca.pem (root),
//!                             meta.json (serial, dates, renew_after, policy)
//!   ..data -> ..<nanos>-<serial>   switched by rename(2) of `..data.tmp`
//!   ..reloaded                serial whose reload hooks last succeeded
//!   key.pem  -> ..data/key.pem     stable paths, created once
//!   cert.pem -> ..data/cert.pem
//!   ca.pem   -> ..data/ca.pem
//!   meta.json -> ..data/meta.json
//! ```
//!
//! Invariants:
//! - A generation directory is complete (every file written and fsynced,
//!   the directory fsynced) before `..data` points at it, and it is never
//!   modified afterwards. So a reader that resolves `..data` once and reads
//!   both files from there always gets a matching key and certificate, and a
//!   reader of the top-level names always gets complete files.
//! - Switching `..data` is one `rename(2)` of a symlink, followed by an
//!   fsync of the output directory: after a crash, `..data` names either
//!   the old or the new generation, never something half-written.
//! - The current and the previous generation are kept (a reader that
//!   resolved `..data` just before the switch can still read its files);
//!   older generations are removed.
//! - Writes are synchronous (no `.await` inside), so cancelling the task
//!   that called [`OutputDir::install`] cannot stop it half-way.
//!
//! With a [`FileGroup`] (a workload running as another user, e.g. nginx),
//! directories are 0750 and the key 0640, all owned by that group; a file
//! is given to the group before it is made group-readable and before its
//! first byte is written.
//!
//! One agent per output directory: two writers racing on `..data` would each
//! stay consistent, but could prune each other's previous generation.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{symlink, DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use certmint::wire::{Identity, KeyType};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The symlink naming the current generation.
pub const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data.tmp";
/// The private key file name.
pub const KEY_FILE: &str = "key.pem";
/// The certificate chain file name (leaf, then intermediates).
pub const CERT_FILE: &str = "cert.pem";
/// The trust anchor file name (the root).
pub const CA_FILE: &str = "ca.pem";
/// The metadata file name.
pub const META_FILE: &str = "meta.json";
/// Names linked at the top level, in the order they are written.
const FILES: [&str; 4] = [KEY_FILE, CERT_FILE, CA_FILE, META_FILE];

/// Mode of the output directory and of generation directories.
const DIR_MODE: u32 = 0o700;
/// [`DIR_MODE`] with a [`FileGroup`].
const GROUP_DIR_MODE: u32 = 0o750;
/// Mode of the private key.
const KEY_MODE: u32 = 0o600;
/// [`KEY_MODE`] with a [`FileGroup`].
const GROUP_KEY_MODE: u32 = 0o640;
/// Serial of the certificate whose reload hooks last succeeded, so that a
/// restart can tell that they did not (a failure, or a crash or power loss
/// between install and hook) and run them.
const RELOADED_FILE: &str = "..reloaded";
/// The key and CSR of an enrollment the server has not answered yet
/// (`workload::PendingEnrollment`), so that a restarted `enroll` or agent
/// retries with the same key. Owner-only, whatever the group setting:
/// only certmint reads it. A file, never a directory, so pruning and
/// access alignment (which only touch generation directories) leave it.
const PENDING_ENROLLMENT_FILE: &str = "..pending-enrollment";
/// Name of the file that proves, at start, that files can be given to the
/// group (so an install never fails on it after the token is spent).
const GROUP_PROBE: &str = "..group-probe.tmp";
/// Mode of public files (certificates, metadata).
const PUBLIC_MODE: u32 = 0o644;

/// Why the output directory could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// A file system operation failed.
    #[error("{action} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `meta.json` is not what certmint writes.
    #[error("{}: not a certmint meta.json: {reason}", .path.display())]
    BadMeta {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A group that may read the files besides their owner: the group of a
/// workload that runs as another user than certmint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileGroup {
    /// As given (a name or a number), for messages.
    name: String,
    gid: u32,
}

impl FileGroup {
    /// The group's id.
    pub fn gid(&self) -> u32 {
        self.gid
    }
}

impl std::str::FromStr for FileGroup {
    type Err = String;

    /// A group name (looked up through the system's name service) or a
    /// numeric gid (used as is; it need not have a name).
    fn from_str(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("a group name or gid is required".into());
        }
        let gid = match spec.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match nix::unistd::Group::from_name(spec) {
                Ok(Some(group)) => group.gid.as_raw(),
                Ok(None) => return Err(format!("no group named {spec:?}")),
                Err(errno) => return Err(format!("cannot look up group {spec:?}: {errno}")),
            },
        };
        Ok(Self {
            name: spec.to_owned(),
            gid,
        })
    }
}

impl std::fmt::Display for FileGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name == self.gid.to_string() {
            write!(f, "gid {}", self.gid)
        } else {
            write!(f, "{} (gid {})", self.name, self.gid)
        }
    }
}

/// What certmint records beside each certificate (`meta.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Lower-case hex serial.
    pub serial: String,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The server's renewal hint.
    #[serde(with = "time::serde::rfc3339")]
    pub renew_after: OffsetDateTime,
    /// Policy that allowed the certificate.
    pub policy: String,
    /// Version of that policy.
    pub policy_version: i64,
    /// Key type of `key.pem`.
    pub key_type: KeyType,
    /// The names certified.
    pub names: Identity,
    /// When this host received the certificate (its own clock). With short
    /// lifetimes `not_before` is backdated far more than the lifetime, so
    /// schedules measure the lifetime from here.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// One complete set of files to install.
pub struct Generation<'a> {
    /// Private key, PKCS#8 PEM (secret).
    pub key_pem: &'a str,
    /// Leaf, then intermediates, PEM.
    pub cert_pem: &'a str,
    /// Trust anchor(s), PEM.
    pub ca_pem: &'a str,
    /// Metadata.
    pub meta: &'a Meta,
}

/// The files of the current generation, all read from one resolved
/// generation directory (so they belong together).
#[derive(Clone)]
pub struct Current {
    /// The generation directory `..data` pointed to.
    pub generation: PathBuf,
    /// Private key PEM (secret).
    pub key_pem: String,
    /// Leaf then intermediates PEM.
    pub cert_pem: String,
    /// Metadata, when present and readable.
    pub meta: Option<Meta>,
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current")
            .field("generation", &self.generation)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// A workload's output directory.
#[derive(Clone, Debug)]
pub struct OutputDir {
    root: PathBuf,
    group: Option<FileGroup>,
    /// The directories [`OutputDir::open_or_create`] itself made, deepest
    /// first (`root`, then parents that were missing): the only ones
    /// [`OutputDir::remove_if_unused`] may remove.
    created: Vec<PathBuf>,
}

impl OutputDir {
    /// Opens `root`, creating it (mode 0700, or 0750 owned by `group`;
    /// parents as needed, like `mkdir -p`) when missing. An existing directory keeps its mode
    /// and owner: the operator may have chosen them on purpose; a warning
    /// says when `group` cannot enter it.
    ///
    /// With a `group`, files are given to it once here, as a probe: when
    /// this process may not (it is neither root nor a member), that is an
    /// error now rather than after a token is spent.
    pub fn open_or_create(root: &Path, group: Option<FileGroup>) -> Result<Self, OutputError> {
        let mut out = Self {
            root: root.to_path_buf(),
            group,
            created: Vec::new(),
        };
        match fs::metadata(root) {
            Ok(meta) if meta.is_dir() => out.warn_unless_group_can_enter(&meta),
            Ok(_) => {
                return Err(OutputError::Io {
                    action: "use as the output directory",
                    path: root.to_path_buf(),
                    source: io::Error::new(io::ErrorKind::AlreadyExists, "not a directory"),
                })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                // Missing parents get the default mode, as with `mkdir -p`:
                // the secrets are guarded by `root` itself, and the group
                // must be able to pass through the parents to reach it.
                // One level at a time, so that exactly the directories
                // made here are known (and may be removed again).
                let result = out.create_parents().and_then(|()| {
                    DirBuilder::new()
                        .mode(DIR_MODE)
                        .create(root)
                        .map_err(io_error("create the output directory", root))?;
                    out.created.insert(0, root.to_path_buf());
                    // `mode` is filtered by the umask; set it exactly, after
                    // the group (never group-open with the wrong group).
                    out.seal_dir(root)
                });
                if let Err(error) = result {
                    out.remove_if_unused();
                    return Err(error);
                }
            }
            Err(error) => return Err(io_error("inspect the output directory", root)(error)),
        }
        if out.group.is_some() {
            if let Err(error) = out.probe_group() {
                out.remove_if_unused();
                return Err(error);
            }
        }
        Ok(out)
    }

    /// Makes the missing parents of `root`, outermost first, recording
    /// each one made here (one made meanwhile by someone else is not).
    fn create_parents(&mut self) -> Result<(), OutputError> {
        let mut missing = Vec::new();
        let mut ancestor = self.root.parent();
        while let Some(dir) = ancestor.filter(|dir| !dir.as_os_str().is_empty()) {
            if fs::symlink_metadata(dir).is_ok() {
                break;
            }
            missing.push(dir.to_path_buf());
            ancestor = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            match fs::create_dir(&dir) {
                Ok(()) => self.created.insert(0, dir),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => {
                    return Err(io_error("create the parent directories of", &self.root)(
                        error,
                    ))
                }
            }
        }
        Ok(())
    }

    /// After a failure: removes the directories this value created, as
    /// long as they are empty (the OS checks that, atomically), deepest
    /// first. A directory that existed before, or that holds anything,
    /// stays.
    pub fn remove_if_unused(&self) {
        for dir in &self.created {
            if fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }

    fn dir_mode(&self) -> u32 {
        if self.group.is_some() {
            GROUP_DIR_MODE
        } else {
            DIR_MODE
        }
    }

    fn key_mode(&self) -> u32 {
        if self.group.is_some() {
            GROUP_KEY_MODE
        } else {
            KEY_MODE
        }
    }

    /// Gives the open `file` (named `path` in errors) to the group, if
    /// there is one. Through the descriptor, so that nothing swapped in at
    /// `path` meanwhile (a symlink) is given away instead.
    fn share_with_group(&self, file: &File, path: &Path) -> Result<(), OutputError> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        std::os::unix::fs::fchown(file, None, Some(group.gid())).map_err(|source| OutputError::Io {
            action: "give to the group",
            path: path.to_path_buf(),
            source: io::Error::new(
                source.kind(),
                format!("{group}: {source} (certmint must run as root or as a member of it)"),
            ),
        })
    }

    /// Sets the group and then the mode of the directory this process just
    /// created at `path`; never follows a symlink put in its place.
    fn seal_dir(&self, path: &Path) -> Result<(), OutputError> {
        self.seal_open_dir(&self.open_dir_nofollow(path)?, path)
    }

    /// [`Self::seal_dir`] for a directory already open.
    fn seal_open_dir(&self, dir: &File, path: &Path) -> Result<(), OutputError> {
        self.share_with_group(dir, path)?;
        dir.set_permissions(fs::Permissions::from_mode(self.dir_mode()))
            .map_err(io_error("set the mode of", path))
    }

    /// Opens the directory at `path`, refusing a symlink in its place.
    fn open_dir_nofollow(&self, path: &Path) -> Result<File, OutputError> {
        use nix::fcntl::OFlag;
        OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW).bits())
            .open(path)
            .map_err(io_error("open the directory", path))
    }

    fn probe_group(&self) -> Result<(), OutputError> {
        let probe = self.root.join(GROUP_PROBE);
        remove_if_present(&probe)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(KEY_MODE)
            .open(&probe)
            .map_err(io_error("create", &probe))?;
        let shared = self.share_with_group(&file, &probe);
        drop(file);
        remove_if_present(&probe)?;
        shared
    }

    fn warn_unless_group_can_enter(&self, meta: &fs::Metadata) {
        use std::os::unix::fs::MetadataExt as _;
        let Some(group) = &self.group else {
            return;
        };
        let mode = meta.mode();
        let by_group = meta.gid() == group.gid && mode & 0o010 != 0;
        if !by_group && mode & 0o001 == 0 {
            tracing::warn!(
                "output directory {} (mode {:04o}, gid {}) cannot be entered by group {group}: \
                 its workload will not read the files; chgrp/chmod it, or remove it and let \
                 certmint create it",
                self.root.display(),
                mode & 0o7777,
                meta.gid()
            );
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stable path of a top-level file (`key.pem`, `cert.pem`, …).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The current generation's files, or `None` when nothing was installed.
    /// `..data` is resolved once, so the files returned belong together.
    pub fn current(&self) -> Result<Option<Current>, OutputError> {
        let link = self.root.join(DATA_LINK);
        let target = match fs::read_link(&link) {
            Ok(target) => target,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error("read the symlink", &link)(error)),
        };
        let generation = self.root.join(target);
        let read = |name: &str| {
            let path = generation.join(name);
            fs::read_to_string(&path).map_err(io_error("read", &path))
        };
        let meta_path = generation.join(META_FILE);
        let meta = match fs::read_to_string(&meta_path) {
            Ok(text) => {
                Some(
                    serde_json::from_str(&text).map_err(|error| OutputError::BadMeta {
                        path: meta_path.clone(),
                        reason: error.to_string(),
                    })?,
                )
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(io_error("read", &meta_path)(error)),
        };
        Ok(Some(Current {
            key_pem: read(KEY_FILE)?,
            cert_pem: read(CERT_FILE)?,
            meta,
            generation,
        }))
    }

    /// The trust anchors last written (`ca.pem` of the current generation).
    pub fn ca_pem(&self) -> Result<Option<String>, OutputError> {
        let path = self.root.join(DATA_LINK).join(CA_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error("read", &path)(error)),
        }
    }

    /// The serial whose reload hooks last succeeded ([`Self::record_reloaded`]),
    /// if any was recorded.
    pub fn reloaded_serial(&self) -> Option<String> {
        let text = fs::read_to_string(self.root.join(RELOADED_FILE)).ok()?;
        Some(text.trim().to_owned()).filter(|serial| !serial.is_empty())
    }

    /// Records that the reload hooks succeeded for `serial`. Replaced in one
    /// rename, so a crash leaves the old record or the new one.
    pub fn record_reloaded(&self, serial: &str) -> Result<(), OutputError> {
        let tmp = self.root.join(format!("{RELOADED_FILE}.tmp"));
        remove_if_present(&tmp)?;
        self.write_synced(&tmp, format!("{serial}\n").as_bytes(), PUBLIC_MODE)?;
        let path = self.root.join(RELOADED_FILE);
        fs::rename(&tmp, &path).map_err(io_error("replace", &path))?;
        sync_dir(&self.root)
    }

    /// Replaces the top-level file `name` (outside the generations: e.g.
    /// `crl.pem`, which changes without a new certificate) with `text`:
    /// written and synced under a temporary name with the public mode and
    /// the group, then renamed over, so a reader sees the old file or the
    /// new one, never a partial one.
    pub fn replace_file(&self, name: &str, text: &str) -> Result<(), OutputError> {
        let tmp = self.root.join(format!("..{name}.tmp"));
        remove_if_present(&tmp)?;
        self.write_synced(&tmp, text.as_bytes(), PUBLIC_MODE)?;
        let path = self.root.join(name);
        fs::rename(&tmp, &path).map_err(io_error("replace", &path))?;
        sync_dir(&self.root)
    }

    /// The record of the enrollment not answered yet, if one is stored.
    pub fn pending_enrollment(&self) -> Option<String> {
        fs::read_to_string(self.root.join(PENDING_ENROLLMENT_FILE)).ok()
    }

    /// Stores the record of the enrollment about to be sent, replaced in
    /// one rename and synced before the request leaves.
    pub fn save_pending_enrollment(&self, record: &str) -> Result<(), OutputError> {
        let tmp = self.root.join(format!("{PENDING_ENROLLMENT_FILE}.tmp"));
        remove_if_present(&tmp)?;
        self.write_synced(&tmp, record.as_bytes(), KEY_MODE)?;
        let path = self.root.join(PENDING_ENROLLMENT_FILE);
        fs::rename(&tmp, &path).map_err(io_error("replace", &path))?;
        sync_dir(&self.root)
    }

    /// Removes the record once the server has answered for good.
    pub fn forget_pending_enrollment(&self) -> Result<(), OutputError> {
        remove_if_present(&self.root.join(PENDING_ENROLLMENT_FILE))?;
        sync_dir(&self.root)
    }

    /// Writes and syncs every file of a generation into the new `dir`.
    fn write_generation(&self, dir: &Path, generation: &Generation<'_>) -> Result<(), OutputError> {
        let meta_json = serde_json::to_string_pretty(generation.meta).map_err(|error| {
            OutputError::BadMeta {
                path: dir.join(META_FILE),
                reason: error.to_string(),
            }
        })?;
        let contents = [
            (KEY_FILE, generation.key_pem, self.key_mode()),
            (CERT_FILE, generation.cert_pem, PUBLIC_MODE),
            (CA_FILE, generation.ca_pem, PUBLIC_MODE),
            (META_FILE, meta_json.as_str(), PUBLIC_MODE),
        ];
        for (file, text, mode) in contents {
            self.write_synced(&dir.join(file), text.as_bytes(), mode)?;
        }
        sync_dir(dir)
    }

    /// Installs a complete generation and makes it current atomically;
    /// returns its directory.
    pub fn install(&self, generation: &Generation<'_>) -> Result<PathBuf, OutputError> {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        let name = format!("..{nanos}-{}", sanitise(&generation.meta.serial));
        let dir = self.root.join(&name);
        DirBuilder::new()
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(io_error("create the generation directory", &dir))?;
        let written = self
            .seal_dir(&dir)
            .and_then(|()| self.write_generation(&dir, generation));
        if let Err(error) = written {
            // Leave no partial generation (a half-written key) behind; the
            // caller keeps what it was given and may try again.
            if let Err(cleanup) = fs::remove_dir_all(&dir) {
                tracing::warn!(
                    "could not remove the partial generation {}: {cleanup}",
                    dir.display()
                );
            }
            return Err(error);
        }

        let previous = fs::read_link(self.root.join(DATA_LINK)).ok();
        let tmp = self.root.join(DATA_LINK_TMP);
        remove_if_present(&tmp)?;
        symlink(&name, &tmp).map_err(io_error("create the symlink", &tmp))?;
        let data = self.root.join(DATA_LINK);
        fs::rename(&tmp, &data).map_err(io_error("switch", &data))?;
        sync_dir(&self.root)?;

        for file in FILES {
            self.ensure_link(file)?;
        }
        sync_dir(&self.root)?;
        self.prune(&name, previous.as_deref());
        Ok(dir)
    }

    /// Makes `<root>/<file>` a symlink to `..data/<file>` unless it already is.
    /// Points every stable name (`key.pem`, …) at `..data` again when a
    /// generation is current: a crash between the `..data` switch and the
    /// links of a first install, or a name removed by hand, would otherwise
    /// stay broken until the next renewal. Nothing to do without `..data`.
    pub fn repair_links(&self) -> Result<(), OutputError> {
        if fs::read_link(self.root.join(DATA_LINK)).is_err() {
            return Ok(());
        }
        for file in FILES {
            self.ensure_link(file)?;
        }
        sync_dir(&self.root)
    }

    /// Brings every kept generation's group and modes in line with this
    /// directory's setting, so that adding or removing `group` takes
    /// effect at the next start rather than at the next renewal (the
    /// previous generation's key is still valid, so it counts too). Files
    /// first, then their directory: when the group is removed each key is
    /// private again before anything else changes.
    ///
    /// Only real directories found in the output directory are touched,
    /// and their files are opened relative to them without following
    /// symlinks and without blocking (a FIFO is skipped), so nothing
    /// planted there redirects a chown or chmod elsewhere.
    pub fn align_access(&self) -> Result<(), OutputError> {
        let entries = fs::read_dir(&self.root).map_err(io_error("list", &self.root))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let is_generation = name.to_str().is_some_and(|name| {
                name.starts_with("..") && name != DATA_LINK && !name.ends_with(".tmp")
            });
            // `file_type` comes from readdir and does not follow symlinks.
            if is_generation && entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                self.align_generation(&entry.path())?;
            }
        }
        Ok(())
    }

    fn align_generation(&self, generation: &Path) -> Result<(), OutputError> {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::Mode;
        let dir = self.open_dir_nofollow(generation)?;
        let files = [
            (KEY_FILE, self.key_mode()),
            (CERT_FILE, PUBLIC_MODE),
            (CA_FILE, PUBLIC_MODE),
            (META_FILE, PUBLIC_MODE),
        ];
        for (file, mode) in files {
            let path = generation.join(file);
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
            let handle = match openat(&dir, file, flags, Mode::empty()) {
                Ok(fd) => File::from(fd),
                // meta.json is optional (see `current`).
                Err(nix::errno::Errno::ENOENT) if file == META_FILE => continue,
                Err(errno) => return Err(io_error("open", &path)(errno.into())),
            };
            let is_file = handle
                .metadata()
                .map_err(io_error("inspect", &path))?
                .is_file();
            if !is_file {
                tracing::warn!(path = %path.display(), "not a regular file; its access is left alone");
                continue;
            }
            self.share_with_group(&handle, &path)?;
            handle
                .set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io_error("set the mode of", &path))?;
        }
        self.seal_open_dir(&dir, generation)
    }

    fn ensure_link(&self, file: &str) -> Result<(), OutputError> {
        let path = self.root.join(file);
        let wanted = Path::new(DATA_LINK).join(file);
        if fs::read_link(&path).is_ok_and(|target| target == wanted) {
            return Ok(());
        }
        // Replace whatever is there (an older plain file, a wrong link) in
        // one rename, so the name never disappears for a reader.
        let tmp = self.root.join(format!("..{file}.tmp"));
        remove_if_present(&tmp)?;
        symlink(&wanted, &tmp).map_err(io_error("create the symlink", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_error("replace", &path))
    }

    fn write_synced(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<(), OutputError> {
        // create_new with the owner-only part of the mode: the file never
        // exists with a wider mode or for the wrong group, not even for an
        // instant (the key is private to its owner from its first byte, and
        // group-readable only once the group is the right one).
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o700)
            .open(path)
            .map_err(io_error("create", path))?;
        self.share_with_group(&file, path)?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("set the mode of", path))?;
        file.write_all(bytes).map_err(io_error("write", path))?;
        file.sync_all().map_err(io_error("fsync", path))
    }

    /// Removes generations other than `current` and `previous`. Failures are
    /// logged, not returned: the new generation is already in place.
    fn prune(&self, current: &str, previous: Option<&Path>) {
        let previous = previous.and_then(Path::to_str);
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_generation = name.starts_with("..")
                && name != DATA_LINK
                && name != DATA_LINK_TMP
                && !name.ends_with(".tmp");
            if !is_generation || name == current || Some(name) == previous {
                continue;
            }
            // Only real directories: never follow a symlink out of the tree.
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                if let Err(error) = fs::remove_dir_all(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), %error, "cannot remove an old generation");
                }
            }
        }
    }
}

/// Keeps a serial usable as part of a file name.
fn sanitise(serial: &str) -> String {
    serial
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(40)
        .collect()
}

fn sync_dir(path: &Path) -> Result<(), OutputError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("fsync the directory", path))
}

fn remove_if_present(path: &Path) -> Result<(), OutputError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("remove", path)(error)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn meta(serial: &str) -> Meta {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        Meta {
            serial: serial.into(),
            not_before: now,
            not_after: now + time::Duration::hours(1),
            renew_after: now + time::Duration::minutes(40),
            policy: "p".into(),
            policy_version: 1,
            key_type: KeyType::EcP256,
            names: Identity {
                dns: vec!["a.test".into()],
                ..Identity::default()
            },
            received_at: now,
        }
    }

    fn install(out: &OutputDir, serial: &str) -> PathBuf {
        let meta = meta(serial);
        out.install(&Generation {
            key_pem: &format!("key {serial}"),
            cert_pem: &format!("cert {serial}"),
            ca_pem: "ca",
            meta: &meta,
        })
        .unwrap()
    }

    fn generations(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root)
            .unwrap()
            .flatten()
            .filter(|entry| entry.file_type().unwrap().is_dir())
            .map(|entry| entry.file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn ok_creates_the_directory_0700_and_the_key_0600() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("a/b/out");
        let out = OutputDir::open_or_create(&root, None).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        let generation = install(&out, "01");
        assert_eq!(
            fs::metadata(generation.join(KEY_FILE)).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(generation.join(CERT_FILE)).unwrap().mode() & 0o777,
            0o644
        );
        // The stable names are links into ..data and read the new files.
        for file in FILES {
            assert_eq!(
                fs::read_link(root.join(file)).unwrap(),
                Path::new(DATA_LINK).join(file)
            );
        }
        assert_eq!(fs::read_to_string(root.join(KEY_FILE)).unwrap(), "key 01");
        let current = out.current().unwrap().unwrap();
        assert_eq!(current.meta.unwrap().serial, "01");
        assert_eq!(current.cert_pem, "cert 01");
    }

    /// A gid this process may give files to: any gid as root (one that is
    /// not its own, so the test sees a change), else its own group.
    fn shareable_group() -> FileGroup {
        let gid = if nix::unistd::geteuid().is_root() {
            4242
        } else {
            nix::unistd::getegid().as_raw()
        };
        gid.to_string().parse().unwrap()
    }

    #[test]
    fn ok_group_owns_everything_and_reads_the_key() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("parent/out");
        let group = shareable_group();
        let out = OutputDir::open_or_create(&root, Some(group.clone())).unwrap();
        let owned = |path: &Path| {
            let meta = fs::metadata(path).unwrap();
            (meta.gid(), meta.mode() & 0o777)
        };
        assert_eq!(owned(&root), (group.gid(), 0o750));
        // The parent is passable, like `mkdir -p` makes it.
        assert_eq!(owned(&temp.path().join("parent")).1 & 0o011, 0o011);
        assert!(!root.join(GROUP_PROBE).exists());
        let generation = install(&out, "01");
        assert_eq!(owned(&generation), (group.gid(), 0o750));
        assert_eq!(owned(&generation.join(KEY_FILE)), (group.gid(), 0o640));
        assert_eq!(owned(&generation.join(CERT_FILE)), (group.gid(), 0o644));
        assert_eq!(owned(&root.join(KEY_FILE)), (group.gid(), 0o640));
        // Without a group nothing is opened to one.
        let private = OutputDir::open_or_create(&temp.path().join("private"), None).unwrap();
        let generation = install(&private, "02");
        assert_eq!(owned(&generation).1, 0o700);
        assert_eq!(owned(&generation.join(KEY_FILE)).1, 0o600);
    }

    #[test]
    fn ok_adding_or_removing_the_group_aligns_the_kept_generations() {
        let temp = tempfile::tempdir().unwrap();
        let owned = |path: &Path| {
            let meta = fs::metadata(path).unwrap();
            (meta.gid(), meta.mode() & 0o777)
        };
        let private = OutputDir::open_or_create(temp.path(), None).unwrap();
        private.align_access().expect("nothing installed yet");
        let previous = install(&private, "01");
        let current = install(&private, "02");
        // Something planted in the directory is never followed: a symlink
        // named like a generation, pointing at a directory outside.
        let outside = tempfile::tempdir().unwrap();
        let outside_key = outside.path().join(KEY_FILE);
        fs::write(&outside_key, "not ours").unwrap();
        fs::set_permissions(&outside_key, fs::Permissions::from_mode(0o600)).unwrap();
        symlink(outside.path(), temp.path().join("..planted")).unwrap();
        let group = shareable_group();
        let shared = OutputDir::open_or_create(temp.path(), Some(group.clone())).unwrap();
        shared.align_access().unwrap();
        for generation in [&previous, &current] {
            assert_eq!(owned(generation), (group.gid(), 0o750));
            assert_eq!(owned(&generation.join(KEY_FILE)), (group.gid(), 0o640));
            assert_eq!(owned(&generation.join(CA_FILE)), (group.gid(), 0o644));
        }
        assert_eq!(owned(&outside_key).1, 0o600);
        private.align_access().unwrap();
        for generation in [&previous, &current] {
            assert_eq!(owned(generation).1, 0o700);
            assert_eq!(owned(&generation.join(KEY_FILE)).1, 0o600);
        }
    }

    #[test]
    fn ok_an_existing_directory_keeps_its_owner_and_mode_with_a_group() {
        let temp = tempfile::tempdir().unwrap();
        fs::set_permissions(temp.path(), fs::Permissions::from_mode(0o711)).unwrap();
        let before = fs::metadata(temp.path()).unwrap().gid();
        let out = OutputDir::open_or_create(temp.path(), Some(shareable_group())).unwrap();
        let meta = fs::metadata(temp.path()).unwrap();
        assert_eq!((meta.gid(), meta.mode() & 0o777), (before, 0o711));
        install(&out, "01");
    }

    #[test]
    fn ok_remove_if_unused_removes_only_the_empty_directories_it_made() {
        let temp = tempfile::tempdir().unwrap();
        // Made here, parents included: all of it goes, the base stays.
        let nested = temp.path().join("a/b/out");
        OutputDir::open_or_create(&nested, None)
            .unwrap()
            .remove_if_unused();
        assert!(!temp.path().join("a").exists());
        assert!(temp.path().exists());

        // Existing before: stays, even empty.
        let existing = temp.path().join("existing");
        fs::create_dir(&existing).unwrap();
        OutputDir::open_or_create(&existing, None)
            .unwrap()
            .remove_if_unused();
        assert!(existing.is_dir());

        // Made here but no longer empty: stays, and so do its parents.
        let used = temp.path().join("c/out");
        let out = OutputDir::open_or_create(&used, None).unwrap();
        fs::write(used.join("note"), "kept").unwrap();
        out.remove_if_unused();
        assert!(used.join("note").is_file());
    }

    #[test]
    fn fail_unknown_group_names() {
        let error = "no-such-group-certmint".parse::<FileGroup>().unwrap_err();
        assert!(error.contains("no group named"), "{error}");
        assert!("".parse::<FileGroup>().is_err());
    }

    #[test]
    fn ok_repair_links_restores_missing_and_wrong_names() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        let out = OutputDir::open_or_create(root, None).unwrap();
        out.repair_links()
            .expect("nothing to repair before a first install");
        assert!(fs::symlink_metadata(root.join(KEY_FILE)).is_err());
        install(&out, "01");
        fs::remove_file(root.join(KEY_FILE)).unwrap();
        // A plain file where a link belongs (removing the link first, so
        // the write does not go through it into the generation).
        fs::remove_file(root.join(CERT_FILE)).unwrap();
        fs::write(root.join(CERT_FILE), "stale").unwrap();
        out.repair_links().unwrap();
        for file in FILES {
            assert_eq!(
                fs::read_link(root.join(file)).unwrap(),
                Path::new(DATA_LINK).join(file),
                "{file}"
            );
        }
        assert_eq!(fs::read_to_string(root.join(KEY_FILE)).unwrap(), "key 01");
        assert_eq!(fs::read_to_string(root.join(CERT_FILE)).unwrap(), "cert 01");
    }

    #[test]
    fn ok_keeps_only_the_current_and_the_previous_generation() {
        let temp = tempfile::tempdir().unwrap();
        let out = OutputDir::open_or_create(temp.path(), None).unwrap();
        let first = install(&out, "01");
        let second = install(&out, "02");
        assert_eq!(generations(temp.path()).len(), 2);
        let third = install(&out, "03");
        let left = generations(temp.path());
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(!first.exists());
        assert!(second.exists() && third.exists());
        assert_eq!(
            fs::read_to_string(temp.path().join(CERT_FILE)).unwrap(),
            "cert 03"
        );
        assert!(!temp.path().join(DATA_LINK_TMP).exists());
    }

    #[test]
    fn ok_replaces_plain_files_left_by_an_older_tool() {
        let temp = tempfile::tempdir().unwrap();
        fs::write(temp.path().join(CERT_FILE), "old").unwrap();
        let out = OutputDir::open_or_create(temp.path(), None).unwrap();
        install(&out, "01");
        assert_eq!(
            fs::read_to_string(temp.path().join(CERT_FILE)).unwrap(),
            "cert 01"
        );
    }

    #[test]
    fn ok_the_reloaded_serial_survives_reopening_and_installs() {
        let temp = tempfile::tempdir().unwrap();
        let out = OutputDir::open_or_create(temp.path(), None).unwrap();
        assert_eq!(out.reloaded_serial(), None);
        out.record_reloaded("01").unwrap();
        out.record_reloaded("02").unwrap();
        for serial in ["03", "04", "05"] {
            install(&out, serial);
        }
        let reopened = OutputDir::open_or_create(temp.path(), None).unwrap();
        assert_eq!(reopened.reloaded_serial().as_deref(), Some("02"));
        assert!(!temp.path().join("..reloaded.tmp").exists());
    }

    #[test]
    fn ok_an_empty_directory_has_no_current_generation() {
        let temp = tempfile::tempdir().unwrap();
        let out = OutputDir::open_or_create(temp.path(), None).unwrap();
        assert!(out.current().unwrap().is_none());
        assert!(out.ca_pem().unwrap().is_none());
    }

    #[test]
    fn fail_a_file_where_the_directory_should_be() {
        let temp = tempfile::tempdir().unwrap();
        let file = temp.path().join("out");
        fs::write(&file, "x").unwrap();
        assert!(matches!(
            OutputDir::open_or_create(&file, None),
            Err(OutputError::Io { .. })
        ));
    }

    /// A reader resolving `..data` once per read never sees a key from one
    /// generation with a certificate from another, while a writer installs
    /// generation after generation.
    #[test]
    fn ok_concurrent_readers_always_see_matching_pairs() {
        let temp = tempfile::tempdir().unwrap();
        let out = OutputDir::open_or_create(temp.path(), None).unwrap();
        install(&out, "0");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let out = out.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Installs here are back to back, so a generation this
                    // reader resolved may be pruned two installs later; that
                    // is a NotFound (read again), never a mismatch.
                    match out.current() {
                        Ok(current) => {
                            let current = current.unwrap();
                            let key = current.key_pem.strip_prefix("key ").unwrap().to_owned();
                            let cert = current.cert_pem.strip_prefix("cert ").unwrap();
                            assert_eq!(key, cert);
                            reads += 1;
                        }
                        Err(OutputError::Io { source, .. })
                            if source.kind() == io::ErrorKind::NotFound => {}
                        Err(error) => panic!("{error}"),
                    }
                    match fs::read_to_string(out.path(CERT_FILE)) {
                        Ok(top) => assert!(top.starts_with("cert "), "{top:?}"),
                        Err(error) => assert_eq!(error.kind(), io::ErrorKind::NotFound),
                    }
                }
                reads
            })
        };
        for serial in 1..200 {
            install(&out, &serial.to_string());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }
}
