//! The token model: slots, tokens, sessions, objects, login state and the
//! find/sign/verify/digest operation state machines of one application.
//!
//! A [`Module`] is what one `C_Initialize` … `C_Finalize` cycle of an
//! application sees. It is plain safe Rust: unit tests drive it directly,
//! and the C ABI in [`crate::ffi`] only copies arguments in and results out.
//!
//! # Layout
//!
//! This file holds the types and the [`Module`] state; the methods of
//! [`Module`] are spread over one file per area:
//!
//! - `slots`: the slot list, token discovery, the locked read-modify-write
//!   of a token record, `C_InitToken`;
//! - `sessions`: opening and closing sessions, login, the user and SO PINs;
//! - `objects`: handles, creating, reading, writing and finding objects,
//!   key-pair generation;
//! - `operations`: the sign, verify and digest state machines, random.
//!
//! # Invariants
//!
//! - Slots: every initialised token found in the store gets a slot id when
//!   first seen, and keeps it for the module's lifetime (so an application
//!   that looked a token up by label keeps finding it after a "device
//!   removed" / "re-inserted" cycle). One uninitialised slot always follows
//!   them, as with SoftHSM2: `C_InitToken` on it creates a token there and a
//!   new free slot appears.
//! - Token state is the store's file. Before a token is used its file stamp
//!   is checked and the record re-read if another process (the CLI, another
//!   replica) changed it; every change is a locked read-modify-write
//!   ([`Module::modify`]), so two processes never lose each other's objects.
//! - Login state belongs to the application and the token, not to one
//!   session (PKCS#11 v2.40 section 5.6). While the user or SO is logged in,
//!   the unwrapped token key is held in memory ([`TokenKey`] wipes itself);
//!   it is dropped on logout, when the last session closes, and on device
//!   removal.
//! - Private key material never becomes an attribute: it is sealed in the
//!   store, opened only to sign, and cached as an OpenSSL key while logged
//!   in. Attribute reads of its components are refused unless the key is
//!   neither sensitive nor non-extractable.
//! - Private objects (`CKA_PRIVATE`) are invisible, to find and to handle
//!   lookups alike, unless the user is logged in.
//! - Once the device is removed every session is gone: calls on sessions
//!   return `CKR_DEVICE_REMOVED` while it stays removed and
//!   `CKR_SESSION_HANDLE_INVALID` after it is re-inserted.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use cryptoki_sys::*;
use openssl::pkey::{PKey, Private};

use crate::config::Config;
use crate::error::{Ckr, Result};
use crate::faults::FileStamp;
use crate::store::{Store, StoredObject, TokenKey, TokenRecord};

mod objects;
mod operations;
mod sessions;
mod slots;
#[cfg(test)]
mod tests;

use operations::{DigestOp, SignOp, VerifyOp};

/// Shortest PIN accepted.
pub const MIN_PIN_LEN: usize = 4;
/// Longest PIN accepted.
pub const MAX_PIN_LEN: usize = 255;

/// Who is logged in to a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    /// Nobody: public objects only.
    Public,
    /// The normal user.
    User,
    /// The security officer.
    So,
}

/// What `C_GetSlotInfo` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Human-readable description.
    pub description: String,
    /// Whether a token is present (false while the device is removed).
    pub token_present: bool,
}

/// What `C_GetTokenInfo` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Label, unpadded (empty for the free slot).
    pub label: String,
    /// Serial number (16 hex digits, empty for the free slot).
    pub serial: String,
    /// `CKF_*` token flags.
    pub flags: CK_FLAGS,
    /// Session limit in force (`None`: effectively infinite).
    pub max_sessions: Option<u64>,
    /// Open sessions on this token.
    pub sessions: u64,
    /// Open read/write sessions on this token.
    pub rw_sessions: u64,
}

/// What `C_GetSessionInfo` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The slot.
    pub slot: CK_SLOT_ID,
    /// `CKS_*`.
    pub state: CK_STATE,
    /// `CKF_SERIAL_SESSION`, plus `CKF_RW_SESSION` for read/write sessions.
    pub flags: CK_FLAGS,
}

/// The outcome of reading one attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeValue {
    /// The value.
    Value(Vec<u8>),
    /// The object has it, but it may not be revealed.
    Sensitive,
    /// The object has no such attribute.
    Invalid,
}

/// Identifies an object across the module: its token and its id there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ObjectKey {
    serial: String,
    uid: String,
}

/// An object that lives only as long as the session that created it.
struct SessionObject {
    owner: CK_SESSION_HANDLE,
    object: StoredObject,
    key: Option<Arc<PKey<Private>>>,
}

/// A token as this application sees it.
struct Token {
    record: TokenRecord,
    stamp: Option<FileStamp>,
    login: Login,
    key: Option<TokenKey>,
    /// Private keys opened while logged in, by object id.
    keys: HashMap<String, Arc<PKey<Private>>>,
    session_objects: BTreeMap<String, SessionObject>,
}

impl Token {
    fn new(record: TokenRecord, stamp: Option<FileStamp>) -> Token {
        Token {
            record,
            stamp,
            login: Login::Public,
            key: None,
            keys: HashMap::new(),
            session_objects: BTreeMap::new(),
        }
    }

    pub(super) fn object(&self, uid: &str) -> Option<&StoredObject> {
        self.record
            .objects
            .get(uid)
            .or_else(|| self.session_objects.get(uid).map(|entry| &entry.object))
    }

    fn visible(&self, object: &StoredObject) -> bool {
        !object.flag(CKA_PRIVATE) || self.login == Login::User
    }

    fn log_out(&mut self) {
        self.login = Login::Public;
        self.key = None;
        self.keys.clear();
    }
}

struct FindOp {
    handles: Vec<CK_OBJECT_HANDLE>,
    next: usize,
}

struct Session {
    serial: String,
    slot: CK_SLOT_ID,
    rw: bool,
    find: Option<FindOp>,
    sign: Option<SignOp>,
    verify: Option<VerifyOp>,
    digest: Option<DigestOp>,
}

/// One application's view of the simulated HSM.
pub struct Module {
    config: Config,
    store: Store,
    /// Slot id of every token seen, by serial.
    slot_ids: BTreeMap<String, CK_SLOT_ID>,
    /// The id of the uninitialised slot.
    free_slot: CK_SLOT_ID,
    tokens: HashMap<String, Token>,
    sessions: BTreeMap<CK_SESSION_HANDLE, Session>,
    next_session: CK_SESSION_HANDLE,
    handles: HashMap<CK_OBJECT_HANDLE, ObjectKey>,
    handle_of: HashMap<ObjectKey, CK_OBJECT_HANDLE>,
    next_handle: CK_OBJECT_HANDLE,
    removed: bool,
    session_limit: Option<u64>,
}

impl Module {
    /// A module over the state directory of `config`.
    pub fn new(config: Config) -> Module {
        let store = Store::new(config.dir.clone());
        let mut module = Module {
            config,
            store,
            slot_ids: BTreeMap::new(),
            free_slot: 0,
            tokens: HashMap::new(),
            sessions: BTreeMap::new(),
            next_session: 1,
            handles: HashMap::new(),
            handle_of: HashMap::new(),
            next_handle: 1,
            removed: false,
            session_limit: None,
        };
        module.scan();
        module
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- faults --------------------------------------------------------

    /// Applies the device state of the current faults. Removal closes every
    /// session and logs every token out, as pulling a real HSM would.
    pub fn set_device_removed(&mut self, removed: bool) {
        if removed && !self.removed {
            self.sessions.clear();
            for token in self.tokens.values_mut() {
                token.log_out();
                token.session_objects.clear();
            }
        }
        self.removed = removed;
    }

    /// Sets the session limit in force (`None`: unlimited).
    pub fn set_session_limit(&mut self, limit: Option<u64>) {
        self.session_limit = limit;
    }

    /// Ends the operation an injected failure of `function` interrupted:
    /// PKCS#11 says a failed `C_Sign`, `C_SignUpdate`, `C_SignFinal` (and
    /// the verify and digest equivalents) terminates the operation, and an
    /// injected failure must look like a real one.
    pub fn abort_after_failure(&mut self, session: CK_SESSION_HANDLE, function: &str) {
        let Some(session) = self.sessions.get_mut(&session) else {
            return;
        };
        match function {
            "C_Sign" | "C_SignUpdate" | "C_SignFinal" => session.sign = None,
            "C_Verify" | "C_VerifyUpdate" | "C_VerifyFinal" => session.verify = None,
            "C_Digest" | "C_DigestUpdate" | "C_DigestFinal" => session.digest = None,
            _ => {}
        }
    }

    /// The store directory (for diagnostics).
    pub fn dir(&self) -> &Path {
        self.store.dir()
    }
}

fn check_pin_len(pin: &[u8]) -> Result<()> {
    if (MIN_PIN_LEN..=MAX_PIN_LEN).contains(&pin.len()) {
        Ok(())
    } else {
        Err(Ckr::PIN_LEN_RANGE)
    }
}
