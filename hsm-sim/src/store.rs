//! Token state at rest: one JSON file per token under `<dir>/tokens/`.
//!
//! # Format and protection
//!
//! Each token has a random 32-byte *token key*. It is stored only wrapped:
//! with AES-256-GCM under a key-encryption key derived from the SO PIN
//! (PBKDF2-HMAC-SHA256, random 16-byte salt, iteration count recorded
//! beside it), and again under one derived from the user PIN once that is
//! set. The secret part of every private key object (PKCS#8 DER) is sealed
//! with AES-256-GCM under the token key, with a random 12-byte nonce and the
//! token serial and object id as associated data, so a sealed blob cannot be
//! moved to another object or token unnoticed. A PIN is checked by
//! unwrapping: a wrong PIN fails the GCM tag.
//!
//! Attributes (labels, ids, public keys, certificates, flags) are stored in
//! clear and are not integrity-protected. See `docs/HSM-SIM.md` for what this
//! does and does not protect against.
//!
//! # Concurrency
//!
//! Several processes (an application and the `hsm-sim` CLI) may use one
//! directory. Every change is a read-modify-write under an exclusive
//! `flock` on `<dir>/.lock`: the writer re-reads the file if it changed,
//! applies its change, writes a temporary file, `fsync`s it and renames it
//! over the old one. Readers notice changed files by their stamp.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use openssl::hash::MessageDigest;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::error::{Ckr, Result};
use crate::mechanisms::random_bytes;

/// Version of the token file format.
pub const FORMAT: u32 = 1;
/// The token key length (AES-256).
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const SALT_LEN: usize = 16;

/// A token key in memory, wiped on drop.
pub type TokenKey = Zeroizing<[u8; KEY_LEN]>;

/// Bytes written to JSON as lowercase hex.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        hex::decode(text).map(Hex).map_err(serde::de::Error::custom)
    }
}

/// One token file.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TokenRecord {
    /// [`FORMAT`].
    pub format: u32,
    /// Serial number (16 hex digits), also the file name.
    pub serial: String,
    /// Label, without padding.
    pub label: String,
    /// Creation time (nanoseconds since the Unix epoch), for slot order.
    pub created: u128,
    /// The token key wrapped under the SO PIN.
    pub so_pin: WrappedKey,
    /// The token key wrapped under the user PIN, once `C_InitPIN` ran.
    pub user_pin: Option<WrappedKey>,
    /// Token objects by object id.
    pub objects: BTreeMap<String, StoredObject>,
}

/// The token key, wrapped under a key derived from a PIN.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct WrappedKey {
    /// Always `"pbkdf2-hmac-sha256"`.
    pub kdf: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Hex,
    /// AES-256-GCM nonce.
    pub nonce: Hex,
    /// AES-256-GCM ciphertext of the token key, tag appended.
    pub ciphertext: Hex,
}

/// A token object: its attributes in clear, its secret (private keys) sealed.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct StoredObject {
    /// Attribute values by `CKA_*` number, in the C ABI's encoding.
    pub attributes: BTreeMap<u64, Hex>,
    /// The sealed secret part (PKCS#8 DER of a private key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Sealed>,
}

/// AES-256-GCM output.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Sealed {
    /// Nonce.
    pub nonce: Hex,
    /// Ciphertext with the tag appended.
    pub ciphertext: Hex,
}

/// Which PIN a [`WrappedKey`] belongs to (part of the associated data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinRole {
    /// The security officer.
    So,
    /// The normal user.
    User,
}

impl PinRole {
    fn name(self) -> &'static str {
        match self {
            PinRole::So => "so",
            PinRole::User => "user",
        }
    }
}

/// A fresh random token key.
pub fn new_token_key() -> Result<TokenKey> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    random_bytes(key.as_mut_slice())?;
    Ok(key)
}

/// Wraps `key` under a key derived from `pin`.
pub fn wrap_key(
    key: &TokenKey,
    pin: &[u8],
    serial: &str,
    role: PinRole,
    iterations: u32,
) -> Result<WrappedKey> {
    let mut salt = vec![0u8; SALT_LEN];
    random_bytes(&mut salt)?;
    let kek = derive(pin, &salt, iterations)?;
    let aad = format!("hsm-sim/v1/pin/{serial}/{}", role.name());
    let sealed = seal(&kek, aad.as_bytes(), key.as_slice())?;
    Ok(WrappedKey {
        kdf: "pbkdf2-hmac-sha256".to_owned(),
        iterations,
        salt: Hex(salt),
        nonce: sealed.nonce,
        ciphertext: sealed.ciphertext,
    })
}

/// Unwraps the token key with `pin`; `CKR_PIN_INCORRECT` if it is wrong.
pub fn unwrap_key(
    wrapped: &WrappedKey,
    pin: &[u8],
    serial: &str,
    role: PinRole,
) -> Result<TokenKey> {
    if wrapped.kdf != "pbkdf2-hmac-sha256" {
        return Err(Ckr::GENERAL_ERROR);
    }
    let kek = derive(pin, &wrapped.salt.0, wrapped.iterations)?;
    let aad = format!("hsm-sim/v1/pin/{serial}/{}", role.name());
    let sealed = Sealed {
        nonce: wrapped.nonce.clone(),
        ciphertext: wrapped.ciphertext.clone(),
    };
    let plain = open(&kek, aad.as_bytes(), &sealed).map_err(|_| Ckr::PIN_INCORRECT)?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if plain.len() != KEY_LEN {
        return Err(Ckr::GENERAL_ERROR);
    }
    key.copy_from_slice(&plain);
    Ok(key)
}

/// Seals the secret of object `uid` of token `serial`.
pub fn seal_object(key: &TokenKey, serial: &str, uid: &str, secret: &[u8]) -> Result<Sealed> {
    seal(key, object_aad(serial, uid).as_bytes(), secret)
}

/// Opens the secret of object `uid` of token `serial`.
pub fn open_object(
    key: &TokenKey,
    serial: &str,
    uid: &str,
    sealed: &Sealed,
) -> Result<Zeroizing<Vec<u8>>> {
    open(key, object_aad(serial, uid).as_bytes(), sealed).map_err(|_| Ckr::GENERAL_ERROR)
}

fn object_aad(serial: &str, uid: &str) -> String {
    format!("hsm-sim/v1/object/{serial}/{uid}")
}

fn derive(pin: &[u8], salt: &[u8], iterations: u32) -> Result<TokenKey> {
    let mut kek = Zeroizing::new([0u8; KEY_LEN]);
    let iterations = usize::try_from(iterations).map_err(|_| Ckr::GENERAL_ERROR)?;
    openssl::pkcs5::pbkdf2_hmac(
        pin,
        salt,
        iterations,
        MessageDigest::sha256(),
        kek.as_mut_slice(),
    )
    .map_err(|_| Ckr::GENERAL_ERROR)?;
    Ok(kek)
}

fn seal(key: &TokenKey, aad: &[u8], plain: &[u8]) -> Result<Sealed> {
    let mut nonce = vec![0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    let mut tag = [0u8; TAG_LEN];
    let mut ciphertext = encrypt_aead(
        Cipher::aes_256_gcm(),
        key.as_slice(),
        Some(&nonce),
        aad,
        plain,
        &mut tag,
    )
    .map_err(|_| Ckr::GENERAL_ERROR)?;
    ciphertext.extend_from_slice(&tag);
    Ok(Sealed {
        nonce: Hex(nonce),
        ciphertext: Hex(ciphertext),
    })
}

fn open(key: &TokenKey, aad: &[u8], sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>> {
    let data = &sealed.ciphertext.0;
    if data.len() < TAG_LEN || sealed.nonce.0.len() != NONCE_LEN {
        return Err(Ckr::GENERAL_ERROR);
    }
    let (ciphertext, tag) = data.split_at(data.len() - TAG_LEN);
    decrypt_aead(
        Cipher::aes_256_gcm(),
        key.as_slice(),
        Some(&sealed.nonce.0),
        aad,
        ciphertext,
        tag,
    )
    .map(Zeroizing::new)
    .map_err(|_| Ckr::GENERAL_ERROR)
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// An exclusive lock on the state directory, released on drop.
pub struct StoreLock {
    _file: File,
}

impl Store {
    /// The store in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tokens_dir(&self) -> PathBuf {
        self.dir.join("tokens")
    }

    /// The file of the token with this serial.
    pub fn token_path(&self, serial: &str) -> PathBuf {
        self.tokens_dir().join(format!("{serial}.json"))
    }

    /// Takes the directory lock (creating the directory if needed).
    pub fn lock(&self) -> Result<StoreLock> {
        // Owner-only: the files hold wrapped keys and sealed secrets.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.tokens_dir())
            .map_err(|_| Ckr::DEVICE_ERROR)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(".lock"))
            .map_err(|_| Ckr::DEVICE_ERROR)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|_| Ckr::CANT_LOCK)?;
        Ok(StoreLock { _file: file })
    }

    /// Serials of every token file, oldest first.
    pub fn list(&self) -> Vec<(u128, String)> {
        let Ok(entries) = std::fs::read_dir(self.tokens_dir()) else {
            return Vec::new();
        };
        let mut tokens: Vec<(u128, String)> = entries
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                if path.extension()? != "json" {
                    return None;
                }
                let record = self.read_path(&path).ok()?;
                Some((record.created, record.serial))
            })
            .collect();
        tokens.sort();
        tokens
    }

    /// Reads the token with this serial.
    pub fn read(&self, serial: &str) -> Result<TokenRecord> {
        self.read_path(&self.token_path(serial))
    }

    fn read_path(&self, path: &Path) -> Result<TokenRecord> {
        let bytes = std::fs::read(path).map_err(|_| Ckr::DEVICE_ERROR)?;
        let record: TokenRecord = serde_json::from_slice(&bytes).map_err(|_| Ckr::DEVICE_ERROR)?;
        if record.format != FORMAT {
            return Err(Ckr::TOKEN_NOT_RECOGNIZED);
        }
        Ok(record)
    }

    /// Writes a token atomically. Call with the lock held.
    pub fn write(&self, _lock: &StoreLock, record: &TokenRecord) -> Result<()> {
        let path = self.token_path(&record.serial);
        let temporary = path.with_extension(format!("json.tmp.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(record).map_err(|_| Ckr::GENERAL_ERROR)?;
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            File::open(self.tokens_dir())?.sync_all()
        };
        write().map_err(|_| {
            let _ = std::fs::remove_file(&temporary);
            Ckr::DEVICE_ERROR
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_wrap_and_unwrap_with_the_right_pin() {
        let key = new_token_key().expect("key");
        let wrapped = wrap_key(&key, b"1234", "00aa", PinRole::User, 10).expect("wraps");
        let unwrapped = unwrap_key(&wrapped, b"1234", "00aa", PinRole::User).expect("unwraps");
        assert_eq!(unwrapped.as_slice(), key.as_slice());
    }

    #[test]
    fn fail_unwrap_with_wrong_pin_or_role() {
        let key = new_token_key().expect("key");
        let wrapped = wrap_key(&key, b"1234", "00aa", PinRole::User, 10).expect("wraps");
        assert_eq!(
            unwrap_key(&wrapped, b"4321", "00aa", PinRole::User).err(),
            Some(Ckr::PIN_INCORRECT)
        );
        assert_eq!(
            unwrap_key(&wrapped, b"1234", "00aa", PinRole::So).err(),
            Some(Ckr::PIN_INCORRECT)
        );
    }

    #[test]
    fn fail_open_object_moved_to_another_id() {
        let key = new_token_key().expect("key");
        let sealed = seal_object(&key, "00aa", "one", b"secret").expect("seals");
        assert_eq!(
            open_object(&key, "00aa", "one", &sealed)
                .expect("opens")
                .as_slice(),
            b"secret"
        );
        assert!(open_object(&key, "00aa", "two", &sealed).is_err());
    }

    #[test]
    fn ok_write_then_read_and_list() {
        let temp = tempfile::tempdir().expect("tempdir");
        let store = Store::new(temp.path().to_path_buf());
        let key = new_token_key().expect("key");
        let record = TokenRecord {
            format: FORMAT,
            serial: "0123456789abcdef".into(),
            label: "t".into(),
            created: 5,
            so_pin: wrap_key(&key, b"so", "0123456789abcdef", PinRole::So, 10).expect("wraps"),
            user_pin: None,
            objects: BTreeMap::new(),
        };
        let lock = store.lock().expect("locks");
        store.write(&lock, &record).expect("writes");
        drop(lock);
        assert_eq!(store.read("0123456789abcdef").expect("reads").label, "t");
        assert_eq!(store.list(), vec![(5, "0123456789abcdef".to_owned())]);
    }
}
