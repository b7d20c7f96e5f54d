//! The token model: slots, tokens, sessions, objects, login state and the
//! find/sign/verify/digest operation state machines of one application.
//!
//! A [`Module`] is what one `C_Initialize` … `C_Finalize` cycle of an
//! application sees. It is plain safe Rust: unit tests drive it directly,
//! and the C ABI in [`crate::ffi`] only copies arguments in and results out.
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
use zeroize::Zeroizing;

use crate::config::Config;
use crate::error::{Ckr, Result};
use crate::faults::FileStamp;
use crate::mechanisms::{self, Digest, KeySpec, Param, Scheme};
use crate::object::{self, boolean, ulong, Template};
use crate::store::{self, PinRole, Store, StoredObject, TokenKey, TokenRecord};

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

    fn object(&self, uid: &str) -> Option<&StoredObject> {
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

/// An object to store, with the PKCS#8 and opened form of its private key.
type NewObject = (
    StoredObject,
    Option<(Zeroizing<Vec<u8>>, Arc<PKey<Private>>)>,
);

/// An active sign (`K` = private key) or verify (`K` = public key)
/// operation: the scheme, the key, and the data passed to `C_*Update`.
struct KeyedOp<K> {
    scheme: Scheme,
    key: K,
    data: Zeroizing<Vec<u8>>,
    /// Set by the first `C_*Update`: from then on only `C_*Final` may end it.
    multi_part: bool,
}

impl<K> KeyedOp<K> {
    fn new(scheme: Scheme, key: K) -> Self {
        Self {
            scheme,
            key,
            data: Zeroizing::new(Vec::new()),
            multi_part: false,
        }
    }

    /// Takes the operation for a single-part call (`C_Sign`, `C_Verify`),
    /// which ends it whatever the outcome.
    fn take_single_part(slot: &mut Option<Self>) -> Result<Self> {
        let op = slot.take().ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        if op.multi_part {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        Ok(op)
    }

    /// Takes the operation for `C_*Final`.
    fn take_final(slot: &mut Option<Self>) -> Result<Self> {
        slot.take().ok_or(Ckr::OPERATION_NOT_INITIALIZED)
    }

    /// `C_*Update`: appends `part`; a scheme that cannot hash incrementally
    /// ends the operation with `CKR_FUNCTION_NOT_SUPPORTED`.
    fn update(slot: &mut Option<Self>, part: &[u8]) -> Result<()> {
        let op = slot.as_mut().ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        if !op.scheme.multi_part() {
            *slot = None;
            return Err(Ckr::FUNCTION_NOT_SUPPORTED);
        }
        op.multi_part = true;
        op.data.extend_from_slice(part);
        Ok(())
    }
}

type SignOp = KeyedOp<Arc<PKey<Private>>>;
type VerifyOp = KeyedOp<PKey<openssl::pkey::Public>>;

struct DigestOp {
    digest: Digest,
    data: Vec<u8>,
    multi_part: bool,
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

    // ----- slots and tokens ----------------------------------------------

    /// Picks up tokens created by other processes and assigns slot ids.
    fn scan(&mut self) {
        for (_, serial) in self.store.list() {
            if !self.slot_ids.contains_key(&serial) {
                self.slot_ids.insert(serial, self.free_slot);
                self.free_slot += 1;
            }
        }
    }

    fn serial_of_slot(&self, slot: CK_SLOT_ID) -> Option<&str> {
        self.slot_ids
            .iter()
            .find(|(_, id)| **id == slot)
            .map(|(serial, _)| serial.as_str())
    }

    /// Checks `slot` exists (rescanning once); `Some(serial)` for a token,
    /// `None` for the free slot.
    fn slot(&mut self, slot: CK_SLOT_ID) -> Result<Option<String>> {
        if slot == self.free_slot {
            return Ok(None);
        }
        if self.serial_of_slot(slot).is_none() {
            self.scan();
        }
        if slot == self.free_slot {
            return Ok(None);
        }
        self.serial_of_slot(slot)
            .map(|serial| Some(serial.to_owned()))
            .ok_or(Ckr::SLOT_ID_INVALID)
    }

    /// `C_GetSlotList`: token slots by id, then the free slot. While the
    /// device is removed no slot has a token.
    pub fn slot_list(&mut self, token_present: bool) -> Vec<CK_SLOT_ID> {
        self.scan();
        if token_present && self.removed {
            return Vec::new();
        }
        let mut slots: Vec<CK_SLOT_ID> = self
            .slot_ids
            .iter()
            .filter(|(serial, _)| self.store.token_path(serial).exists())
            .map(|(_, id)| *id)
            .collect();
        slots.sort_unstable();
        slots.push(self.free_slot);
        slots
    }

    /// `C_GetSlotInfo`.
    pub fn slot_info(&mut self, slot: CK_SLOT_ID) -> Result<SlotInfo> {
        let serial = self.slot(slot)?;
        let present = !self.removed
            && serial
                .as_ref()
                .is_none_or(|serial| self.store.token_path(serial).exists());
        Ok(SlotInfo {
            description: format!("hsm-sim slot {slot}"),
            token_present: present,
        })
    }

    /// Loads (or refreshes) a token, if its file changed since last read.
    fn token(&mut self, serial: &str) -> Result<&mut Token> {
        if self.removed {
            return Err(Ckr::TOKEN_NOT_PRESENT);
        }
        let path = self.store.token_path(serial);
        let stamp = FileStamp::of(&path);
        if stamp.is_none() {
            return Err(Ckr::TOKEN_NOT_PRESENT);
        }
        let stale = self
            .tokens
            .get(serial)
            .is_none_or(|token| token.stamp != stamp);
        if stale {
            let record = self.store.read(serial)?;
            match self.tokens.get_mut(serial) {
                Some(token) => {
                    // Re-initialised elsewhere: the token key changed, so
                    // this application's login and cached keys are void.
                    if token.record.so_pin.salt != record.so_pin.salt {
                        token.log_out();
                    }
                    token.record = record;
                    token.stamp = stamp;
                }
                None => {
                    self.tokens
                        .insert(serial.to_owned(), Token::new(record, stamp));
                }
            }
        }
        self.tokens.get_mut(serial).ok_or(Ckr::GENERAL_ERROR)
    }

    /// Locked read-modify-write of a token's file; the in-memory record
    /// follows. `change` sees the freshest record from disk.
    fn modify<T>(
        &mut self,
        serial: &str,
        change: impl FnOnce(&mut TokenRecord) -> Result<T>,
    ) -> Result<T> {
        let lock = self.store.lock()?;
        let mut record = self.store.read(serial)?;
        let value = change(&mut record)?;
        self.store.write(&lock, &record)?;
        let stamp = FileStamp::of(&self.store.token_path(serial));
        drop(lock);
        let token = self
            .tokens
            .entry(serial.to_owned())
            .or_insert_with(|| Token::new(record.clone(), stamp));
        token.record = record;
        token.stamp = stamp;
        Ok(value)
    }

    /// `C_GetTokenInfo`.
    pub fn token_info(&mut self, slot: CK_SLOT_ID) -> Result<TokenInfo> {
        if self.removed {
            self.slot(slot)?;
            return Err(Ckr::TOKEN_NOT_PRESENT);
        }
        let (sessions, rw_sessions) = self.session_counts(slot);
        let max_sessions = self.session_limit;
        let base = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_RESTORE_KEY_NOT_NEEDED;
        let Some(serial) = self.slot(slot)? else {
            return Ok(TokenInfo {
                label: String::new(),
                serial: String::new(),
                flags: base,
                max_sessions,
                sessions,
                rw_sessions,
            });
        };
        let token = self.token(&serial)?;
        let mut flags = base | CKF_TOKEN_INITIALIZED;
        if token.record.user_pin.is_some() {
            flags |= CKF_USER_PIN_INITIALIZED;
        }
        Ok(TokenInfo {
            label: token.record.label.clone(),
            serial: token.record.serial.clone(),
            flags,
            max_sessions,
            sessions,
            rw_sessions,
        })
    }

    fn session_counts(&self, slot: CK_SLOT_ID) -> (u64, u64) {
        let on_slot = self
            .sessions
            .values()
            .filter(|session| session.slot == slot);
        let rw = on_slot.clone().filter(|session| session.rw).count();
        (on_slot.count() as u64, rw as u64)
    }

    /// `C_GetMechanismList`.
    pub fn mechanism_list(&mut self, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>> {
        self.slot(slot)?;
        Ok(mechanisms::mechanism_list()
            .into_iter()
            .map(|entry| entry.0)
            .collect())
    }

    /// `C_GetMechanismInfo`: `(min key size, max key size, flags)`.
    pub fn mechanism_info(
        &mut self,
        slot: CK_SLOT_ID,
        mechanism: CK_MECHANISM_TYPE,
    ) -> Result<(CK_ULONG, CK_ULONG, CK_FLAGS)> {
        self.slot(slot)?;
        mechanisms::mechanism_list()
            .into_iter()
            .find(|entry| entry.0 == mechanism)
            .map(|(_, min, max, flags)| (min, max, flags))
            .ok_or(Ckr::MECHANISM_INVALID)
    }

    /// `C_InitToken`: on the free slot, creates a token; on a token's slot,
    /// checks the SO PIN and wipes it (every object goes, the user PIN is
    /// unset). Returns the token's serial.
    pub fn init_token(&mut self, slot: CK_SLOT_ID, so_pin: &[u8], label: &str) -> Result<String> {
        check_pin_len(so_pin)?;
        if self.removed {
            return Err(Ckr::TOKEN_NOT_PRESENT);
        }
        let label = label.trim_end_matches([' ', '\0']).to_owned();
        let iterations = self.config.kdf_iterations;
        match self.slot(slot)? {
            None => {
                let mut serial_bytes = [0u8; 8];
                mechanisms::random_bytes(&mut serial_bytes)?;
                let serial = hex::encode(serial_bytes);
                let key = store::new_token_key()?;
                let record = TokenRecord {
                    format: store::FORMAT,
                    serial: serial.clone(),
                    label,
                    created: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|elapsed| elapsed.as_nanos())
                        .unwrap_or_default(),
                    so_pin: store::wrap_key(&key, so_pin, &serial, PinRole::So, iterations)?,
                    user_pin: None,
                    objects: BTreeMap::new(),
                };
                let lock = self.store.lock()?;
                self.store.write(&lock, &record)?;
                drop(lock);
                self.slot_ids.insert(serial.clone(), slot);
                self.free_slot += 1;
                Ok(serial)
            }
            Some(serial) => {
                if self
                    .sessions
                    .values()
                    .any(|session| session.serial == serial)
                {
                    return Err(Ckr::SESSION_EXISTS);
                }
                let record = self.token(&serial)?.record.clone();
                store::unwrap_key(&record.so_pin, so_pin, &serial, PinRole::So)?;
                let key = store::new_token_key()?;
                let so_wrapped = store::wrap_key(&key, so_pin, &serial, PinRole::So, iterations)?;
                self.modify(&serial, |record| {
                    record.label = label;
                    record.so_pin = so_wrapped;
                    record.user_pin = None;
                    record.objects.clear();
                    Ok(())
                })?;
                if let Some(token) = self.tokens.get_mut(&serial) {
                    token.log_out();
                    token.session_objects.clear();
                }
                Ok(serial)
            }
        }
    }

    // ----- sessions ------------------------------------------------------

    fn session(&self, handle: CK_SESSION_HANDLE) -> Result<&Session> {
        if self.removed {
            return Err(Ckr::DEVICE_REMOVED);
        }
        self.sessions
            .get(&handle)
            .ok_or(Ckr::SESSION_HANDLE_INVALID)
    }

    fn session_mut(&mut self, handle: CK_SESSION_HANDLE) -> Result<&mut Session> {
        if self.removed {
            return Err(Ckr::DEVICE_REMOVED);
        }
        self.sessions
            .get_mut(&handle)
            .ok_or(Ckr::SESSION_HANDLE_INVALID)
    }

    /// The serial of the session's token, refreshing the token.
    fn session_token(&mut self, handle: CK_SESSION_HANDLE) -> Result<(String, bool)> {
        let session = self.session(handle)?;
        let (serial, rw) = (session.serial.clone(), session.rw);
        self.token(&serial)?;
        Ok((serial, rw))
    }

    /// `C_OpenSession`.
    pub fn open_session(&mut self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Ckr::SESSION_PARALLEL_NOT_SUPPORTED);
        }
        let serial = self.slot(slot)?;
        if self.removed {
            return Err(Ckr::TOKEN_NOT_PRESENT);
        }
        let serial = serial.ok_or(Ckr::TOKEN_NOT_RECOGNIZED)?;
        if let Some(limit) = self.session_limit {
            if self.sessions.len() as u64 >= limit {
                return Err(Ckr::SESSION_COUNT);
            }
        }
        let rw = flags & CKF_RW_SESSION != 0;
        if !rw && self.token(&serial)?.login == Login::So {
            return Err(Ckr::SESSION_READ_WRITE_SO_EXISTS);
        }
        self.token(&serial)?;
        let handle = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            handle,
            Session {
                serial,
                slot,
                rw,
                find: None,
                sign: None,
                verify: None,
                digest: None,
            },
        );
        Ok(handle)
    }

    /// `C_CloseSession`: its session objects go; closing a token's last
    /// session logs the token out.
    pub fn close_session(&mut self, handle: CK_SESSION_HANDLE) -> Result<()> {
        self.session(handle)?;
        let Some(session) = self.sessions.remove(&handle) else {
            return Err(Ckr::SESSION_HANDLE_INVALID);
        };
        let last = !self
            .sessions
            .values()
            .any(|other| other.serial == session.serial);
        if let Some(token) = self.tokens.get_mut(&session.serial) {
            token
                .session_objects
                .retain(|_, entry| entry.owner != handle);
            if last {
                token.log_out();
            }
        }
        Ok(())
    }

    /// `C_CloseAllSessions`.
    pub fn close_all_sessions(&mut self, slot: CK_SLOT_ID) -> Result<()> {
        self.slot(slot)?;
        if self.removed {
            return Err(Ckr::TOKEN_NOT_PRESENT);
        }
        let handles: Vec<CK_SESSION_HANDLE> = self
            .sessions
            .iter()
            .filter(|(_, session)| session.slot == slot)
            .map(|(handle, _)| *handle)
            .collect();
        for handle in handles {
            self.close_session(handle)?;
        }
        Ok(())
    }

    /// `C_GetSessionInfo`.
    pub fn session_info(&mut self, handle: CK_SESSION_HANDLE) -> Result<SessionInfo> {
        let (serial, rw) = self.session_token(handle)?;
        let slot = self.session(handle)?.slot;
        let login = self.token(&serial)?.login;
        let state = match (login, rw) {
            (Login::Public, false) => CKS_RO_PUBLIC_SESSION,
            (Login::Public, true) => CKS_RW_PUBLIC_SESSION,
            (Login::User, false) => CKS_RO_USER_FUNCTIONS,
            (Login::User, true) => CKS_RW_USER_FUNCTIONS,
            (Login::So, _) => CKS_RW_SO_FUNCTIONS,
        };
        let flags = CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 };
        Ok(SessionInfo { slot, state, flags })
    }

    // ----- login and PINs --------------------------------------------------

    /// `C_Login`.
    pub fn login(
        &mut self,
        handle: CK_SESSION_HANDLE,
        user_type: CK_USER_TYPE,
        pin: &[u8],
    ) -> Result<()> {
        let (serial, _) = self.session_token(handle)?;
        let ro_session_exists = self
            .sessions
            .values()
            .any(|session| session.serial == serial && !session.rw);
        let token = self.token(&serial)?;
        let (role, login) = match user_type {
            CKU_USER => (PinRole::User, Login::User),
            CKU_SO => (PinRole::So, Login::So),
            CKU_CONTEXT_SPECIFIC => return Err(Ckr::OPERATION_NOT_INITIALIZED),
            _ => return Err(Ckr::USER_TYPE_INVALID),
        };
        match token.login {
            Login::Public => {}
            current if current == login => return Err(Ckr::USER_ALREADY_LOGGED_IN),
            _ => return Err(Ckr::USER_ANOTHER_ALREADY_LOGGED_IN),
        }
        if login == Login::So && ro_session_exists {
            return Err(Ckr::SESSION_READ_ONLY_EXISTS);
        }
        let wrapped = match role {
            PinRole::So => &token.record.so_pin,
            PinRole::User => token
                .record
                .user_pin
                .as_ref()
                .ok_or(Ckr::USER_PIN_NOT_INITIALIZED)?,
        };
        let key = store::unwrap_key(wrapped, pin, &serial, role)?;
        token.key = Some(key);
        token.login = login;
        Ok(())
    }

    /// `C_Logout`.
    pub fn logout(&mut self, handle: CK_SESSION_HANDLE) -> Result<()> {
        let (serial, _) = self.session_token(handle)?;
        let token = self.token(&serial)?;
        if token.login == Login::Public {
            return Err(Ckr::USER_NOT_LOGGED_IN);
        }
        token.log_out();
        // Operations that hold a private key end with the login.
        for session in self
            .sessions
            .values_mut()
            .filter(|session| session.serial == serial)
        {
            session.sign = None;
            session.find = None;
        }
        Ok(())
    }

    /// `C_InitPIN`: the SO sets the user PIN.
    pub fn init_pin(&mut self, handle: CK_SESSION_HANDLE, pin: &[u8]) -> Result<()> {
        check_pin_len(pin)?;
        let (serial, rw) = self.session_token(handle)?;
        let iterations = self.config.kdf_iterations;
        let token = self.token(&serial)?;
        if token.login != Login::So {
            return Err(Ckr::USER_NOT_LOGGED_IN);
        }
        if !rw {
            return Err(Ckr::SESSION_READ_ONLY);
        }
        let key = token.key.as_ref().ok_or(Ckr::USER_NOT_LOGGED_IN)?;
        let wrapped = store::wrap_key(key, pin, &serial, PinRole::User, iterations)?;
        self.modify(&serial, |record| {
            record.user_pin = Some(wrapped);
            Ok(())
        })
    }

    /// `C_SetPIN`: changes the SO PIN when the SO is logged in, otherwise
    /// the user PIN.
    pub fn set_pin(&mut self, handle: CK_SESSION_HANDLE, old: &[u8], new: &[u8]) -> Result<()> {
        check_pin_len(new)?;
        let (serial, rw) = self.session_token(handle)?;
        if !rw {
            return Err(Ckr::SESSION_READ_ONLY);
        }
        let iterations = self.config.kdf_iterations;
        let token = self.token(&serial)?;
        let role = if token.login == Login::So {
            PinRole::So
        } else {
            PinRole::User
        };
        let wrapped = match role {
            PinRole::So => &token.record.so_pin,
            PinRole::User => token
                .record
                .user_pin
                .as_ref()
                .ok_or(Ckr::USER_PIN_NOT_INITIALIZED)?,
        };
        let key = store::unwrap_key(wrapped, old, &serial, role)?;
        let rewrapped = store::wrap_key(&key, new, &serial, role, iterations)?;
        self.modify(&serial, |record| {
            match role {
                PinRole::So => record.so_pin = rewrapped,
                PinRole::User => record.user_pin = Some(rewrapped),
            }
            Ok(())
        })
    }

    // ----- objects ---------------------------------------------------------

    fn handle_for(&mut self, key: ObjectKey) -> CK_OBJECT_HANDLE {
        if let Some(handle) = self.handle_of.get(&key) {
            return *handle;
        }
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, key.clone());
        self.handle_of.insert(key, handle);
        handle
    }

    /// Resolves an object handle in a session: the object must be on the
    /// session's token, exist, and be visible to the current login.
    fn resolve(
        &mut self,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
    ) -> Result<ObjectKey> {
        let (serial, _) = self.session_token(session)?;
        let key = self
            .handles
            .get(&handle)
            .cloned()
            .ok_or(Ckr::OBJECT_HANDLE_INVALID)?;
        if key.serial != serial {
            return Err(Ckr::OBJECT_HANDLE_INVALID);
        }
        let token = self.token(&serial)?;
        match token.object(&key.uid) {
            Some(object) if token.visible(object) => Ok(key),
            _ => Err(Ckr::OBJECT_HANDLE_INVALID),
        }
    }

    fn object(&mut self, key: &ObjectKey) -> Result<&StoredObject> {
        self.token(&key.serial)?
            .object(&key.uid)
            .ok_or(Ckr::OBJECT_HANDLE_INVALID)
    }

    /// Checks the session may create or change an object with these
    /// `CKA_TOKEN` and `CKA_PRIVATE` values.
    fn check_write(
        &mut self,
        session: CK_SESSION_HANDLE,
        on_token: bool,
        private: bool,
    ) -> Result<()> {
        let (serial, rw) = self.session_token(session)?;
        if on_token && !rw {
            return Err(Ckr::SESSION_READ_ONLY);
        }
        if private && self.token(&serial)?.login != Login::User {
            return Err(Ckr::USER_NOT_LOGGED_IN);
        }
        Ok(())
    }

    fn new_uid() -> Result<String> {
        let mut bytes = [0u8; 8];
        mechanisms::random_bytes(&mut bytes)?;
        Ok(hex::encode(bytes))
    }

    /// Stores a new object (and, for private keys, its sealed secret) on the
    /// token or in the session, and returns its handle.
    fn insert(
        &mut self,
        session: CK_SESSION_HANDLE,
        objects: Vec<NewObject>,
    ) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let (serial, _) = self.session_token(session)?;
        let mut prepared = Vec::with_capacity(objects.len());
        for (mut object, secret) in objects {
            let uid = Module::new_uid()?;
            let on_token = object.flag(CKA_TOKEN);
            let mut key = None;
            if let Some((pkcs8, private)) = secret {
                if on_token {
                    let token = self.token(&serial)?;
                    let token_key = token.key.as_ref().ok_or(Ckr::USER_NOT_LOGGED_IN)?;
                    object.secret = Some(store::seal_object(token_key, &serial, &uid, &pkcs8)?);
                    token.keys.insert(uid.clone(), Arc::clone(&private));
                }
                key = Some(private);
            }
            prepared.push((uid, on_token, object, key));
        }
        let on_disk: Vec<(String, StoredObject)> = prepared
            .iter()
            .filter(|entry| entry.1)
            .map(|entry| (entry.0.clone(), entry.2.clone()))
            .collect();
        if !on_disk.is_empty() {
            self.modify(&serial, |record| {
                record.objects.extend(on_disk);
                Ok(())
            })?;
        }
        let token = self.token(&serial)?;
        let mut uids = Vec::with_capacity(prepared.len());
        for (uid, on_token, object, key) in prepared {
            if !on_token {
                token.session_objects.insert(
                    uid.clone(),
                    SessionObject {
                        owner: session,
                        object,
                        key,
                    },
                );
            }
            uids.push(uid);
        }
        Ok(uids
            .into_iter()
            .map(|uid| {
                self.handle_for(ObjectKey {
                    serial: serial.clone(),
                    uid,
                })
            })
            .collect())
    }

    /// `C_CreateObject`: certificates, public keys and data objects.
    /// Importing private or secret keys is not supported.
    pub fn create_object(
        &mut self,
        session: CK_SESSION_HANDLE,
        template: &Template,
    ) -> Result<CK_OBJECT_HANDLE> {
        let class = template.ulong(CKA_CLASS)?.ok_or(Ckr::TEMPLATE_INCOMPLETE)?;
        let mut object = object::defaults(class);
        match class {
            CKO_CERTIFICATE => {
                let certificate_type = template.ulong(CKA_CERTIFICATE_TYPE)?.unwrap_or(CKC_X_509);
                if certificate_type != CKC_X_509 {
                    return Err(Ckr::ATTRIBUTE_VALUE_INVALID);
                }
                if template.get(CKA_VALUE).is_none_or(<[u8]>::is_empty) {
                    return Err(Ckr::TEMPLATE_INCOMPLETE);
                }
                object::apply_template(&mut object, template, &[])?;
            }
            CKO_PUBLIC_KEY => {
                let key_type = template
                    .ulong(CKA_KEY_TYPE)?
                    .ok_or(Ckr::TEMPLATE_INCOMPLETE)?;
                object::apply_template(&mut object, template, &[])?;
                let public = mechanisms::public_key(key_type, |attribute| {
                    object.get(attribute).map(<[u8]>::to_vec)
                })
                .map_err(|_| Ckr::TEMPLATE_INCONSISTENT)?;
                if key_type == CKK_RSA {
                    object.set(CKA_MODULUS_BITS, ulong(CK_ULONG::from(public.bits())));
                }
            }
            CKO_DATA => object::apply_template(&mut object, template, &[])?,
            _ => return Err(Ckr::ATTRIBUTE_VALUE_INVALID),
        }
        self.check_write(session, object.flag(CKA_TOKEN), object.flag(CKA_PRIVATE))?;
        let handles = self.insert(session, vec![(object, None)])?;
        handles.first().copied().ok_or(Ckr::GENERAL_ERROR)
    }

    /// `C_DestroyObject`.
    pub fn destroy_object(
        &mut self,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let key = self.resolve(session, handle)?;
        let object = self.object(&key)?;
        let on_token = object.flag(CKA_TOKEN);
        if object.get(CKA_DESTROYABLE).is_some() && !object.flag(CKA_DESTROYABLE) {
            return Err(Ckr::ACTION_PROHIBITED);
        }
        self.check_write(session, on_token, false)?;
        if on_token {
            self.modify(&key.serial, |record| {
                record.objects.remove(&key.uid);
                Ok(())
            })?;
        }
        let token = self.token(&key.serial)?;
        token.session_objects.remove(&key.uid);
        token.keys.remove(&key.uid);
        Ok(())
    }

    /// `C_GetAttributeValue`, one outcome per requested type.
    pub fn attribute_values(
        &mut self,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttributeValue>> {
        let key = self.resolve(session, handle)?;
        let object = self.object(&key)?.clone();
        let is_private_key = object.class() == Some(CKO_PRIVATE_KEY);
        let mut values = Vec::with_capacity(types.len());
        for attribute in types {
            let value = if is_private_key && object::is_secret_component(*attribute) {
                if object.flag(CKA_SENSITIVE) || !object.flag(CKA_EXTRACTABLE) {
                    AttributeValue::Sensitive
                } else {
                    let private = self.private_key(&key)?;
                    match mechanisms::private_component(&private, *attribute) {
                        Some(bytes) => AttributeValue::Value(bytes),
                        None => AttributeValue::Invalid,
                    }
                }
            } else {
                match object.get(*attribute) {
                    Some(bytes) => AttributeValue::Value(bytes.to_vec()),
                    None => AttributeValue::Invalid,
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    /// `C_SetAttributeValue`: all changes or none.
    pub fn set_attribute_values(
        &mut self,
        session: CK_SESSION_HANDLE,
        handle: CK_OBJECT_HANDLE,
        template: &Template,
    ) -> Result<()> {
        let key = self.resolve(session, handle)?;
        let mut object = self.object(&key)?.clone();
        let on_token = object.flag(CKA_TOKEN);
        self.check_write(session, on_token, false)?;
        for (attribute, value) in template.validated()? {
            object::check_change(&object, attribute, &value)?;
            object.set(attribute, value);
        }
        if on_token {
            self.modify(&key.serial, |record| {
                let stored = record
                    .objects
                    .get_mut(&key.uid)
                    .ok_or(Ckr::OBJECT_HANDLE_INVALID)?;
                stored.attributes = object.attributes;
                Ok(())
            })
        } else {
            let token = self.token(&key.serial)?;
            let entry = token
                .session_objects
                .get_mut(&key.uid)
                .ok_or(Ckr::OBJECT_HANDLE_INVALID)?;
            entry.object.attributes = object.attributes;
            Ok(())
        }
    }

    /// `C_FindObjectsInit`: snapshots the matching visible objects.
    pub fn find_init(&mut self, session: CK_SESSION_HANDLE, template: &Template) -> Result<()> {
        let (serial, _) = self.session_token(session)?;
        if self.session(session)?.find.is_some() {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        let token = self.token(&serial)?;
        let uids: Vec<String> = token
            .record
            .objects
            .iter()
            .chain(
                token
                    .session_objects
                    .iter()
                    .map(|(uid, entry)| (uid, &entry.object)),
            )
            .filter(|(_, object)| token.visible(object) && object.matches(template))
            .map(|(uid, _)| uid.clone())
            .collect();
        let handles = uids
            .into_iter()
            .map(|uid| {
                self.handle_for(ObjectKey {
                    serial: serial.clone(),
                    uid,
                })
            })
            .collect();
        self.session_mut(session)?.find = Some(FindOp { handles, next: 0 });
        Ok(())
    }

    /// `C_FindObjects`: up to `max` more handles.
    pub fn find(
        &mut self,
        session: CK_SESSION_HANDLE,
        max: usize,
    ) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let find = self
            .session_mut(session)?
            .find
            .as_mut()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        let end = find.handles.len().min(find.next.saturating_add(max));
        let found = find
            .handles
            .get(find.next..end)
            .unwrap_or_default()
            .to_vec();
        find.next = end;
        Ok(found)
    }

    /// `C_FindObjectsFinal`.
    pub fn find_final(&mut self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.session_mut(session)?
            .find
            .take()
            .map(|_| ())
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)
    }

    // ----- keys --------------------------------------------------------------

    /// `C_GenerateKeyPair`: returns `(public, private)` handles.
    pub fn generate_key_pair(
        &mut self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        param: &Param,
        public_template: &Template,
        private_template: &Template,
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        self.session_token(session)?;
        if !matches!(param, Param::None)
            && !matches!(param, Param::Other(bytes) if bytes.is_empty())
        {
            return Err(Ckr::MECHANISM_PARAM_INVALID);
        }
        let spec = KeySpec::from_template(mechanism, public_template)?;
        // The token computes these; a template may not set them.
        let computed = [
            CKA_EC_POINT,
            CKA_MODULUS,
            CKA_VALUE,
            CKA_PRIVATE_EXPONENT,
            CKA_PRIME_1,
            CKA_PRIME_2,
            CKA_EXPONENT_1,
            CKA_EXPONENT_2,
            CKA_COEFFICIENT,
        ];
        let mut public = object::defaults(CKO_PUBLIC_KEY);
        public.set(CKA_KEY_TYPE, ulong(spec.key_type()));
        object::apply_template(&mut public, public_template, &computed)?;
        let mut private = object::defaults(CKO_PRIVATE_KEY);
        private.set(CKA_KEY_TYPE, ulong(spec.key_type()));
        object::apply_template(&mut private, private_template, &computed)?;
        if private.get(CKA_EC_PARAMS).is_some() || private.get(CKA_MODULUS_BITS).is_some() {
            return Err(Ckr::TEMPLATE_INCONSISTENT);
        }
        self.check_write(session, public.flag(CKA_TOKEN), public.flag(CKA_PRIVATE))?;
        self.check_write(session, private.flag(CKA_TOKEN), private.flag(CKA_PRIVATE))?;
        if private.flag(CKA_TOKEN) {
            // Sealing needs the token key, whatever CKA_PRIVATE says.
            let (serial, _) = self.session_token(session)?;
            if self.token(&serial)?.key.is_none() {
                return Err(Ckr::USER_NOT_LOGGED_IN);
            }
        }
        let generated = mechanisms::generate(&spec)?;
        for (attribute, value) in generated.public {
            public.set(attribute, value);
        }
        for (attribute, value) in generated.private {
            private.set(attribute, value);
        }
        for object in [&mut public, &mut private] {
            object.set(CKA_KEY_GEN_MECHANISM, ulong(mechanism));
        }
        let sensitive = private.flag(CKA_SENSITIVE);
        let extractable = private.flag(CKA_EXTRACTABLE);
        private.set(CKA_ALWAYS_SENSITIVE, boolean(sensitive));
        private.set(CKA_NEVER_EXTRACTABLE, boolean(!extractable));
        let handles = self.insert(
            session,
            vec![
                (public, None),
                (private, Some((generated.pkcs8, generated.key))),
            ],
        )?;
        match handles.as_slice() {
            [public, private] => Ok((*public, *private)),
            _ => Err(Ckr::GENERAL_ERROR),
        }
    }

    /// The private key of an object, opened from its sealed secret.
    fn private_key(&mut self, key: &ObjectKey) -> Result<Arc<PKey<Private>>> {
        let token = self.token(&key.serial)?;
        if let Some(entry) = token.session_objects.get(&key.uid) {
            return entry.key.clone().ok_or(Ckr::KEY_TYPE_INCONSISTENT);
        }
        if let Some(private) = token.keys.get(&key.uid) {
            return Ok(Arc::clone(private));
        }
        let object = token
            .record
            .objects
            .get(&key.uid)
            .ok_or(Ckr::OBJECT_HANDLE_INVALID)?;
        let sealed = object.secret.as_ref().ok_or(Ckr::KEY_TYPE_INCONSISTENT)?;
        let token_key = token.key.as_ref().ok_or(Ckr::USER_NOT_LOGGED_IN)?;
        let pkcs8 = store::open_object(token_key, &key.serial, &key.uid, sealed)?;
        let private = Arc::new(mechanisms::load_private_key(&pkcs8)?);
        token.keys.insert(key.uid.clone(), Arc::clone(&private));
        Ok(private)
    }

    // ----- sign ----------------------------------------------------------------

    /// The key object of a sign or verify initialisation: `handle` names
    /// an object of `class` that allows `usage`, and `mechanism` fits its
    /// key type. `slot_busy` says whether that operation is already active.
    fn operation_key(
        &mut self,
        session: CK_SESSION_HANDLE,
        slot_busy: bool,
        handle: CK_OBJECT_HANDLE,
        (class, usage): (CK_OBJECT_CLASS, CK_ATTRIBUTE_TYPE),
        (mechanism, param): (CK_MECHANISM_TYPE, &Param),
    ) -> Result<(ObjectKey, CK_KEY_TYPE, Scheme)> {
        if slot_busy {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        let key = self
            .resolve(session, handle)
            .map_err(|_| Ckr::KEY_HANDLE_INVALID)?;
        let object = self.object(&key)?;
        if object.class() != Some(class) {
            return Err(Ckr::KEY_TYPE_INCONSISTENT);
        }
        if !object.flag(usage) {
            return Err(Ckr::KEY_FUNCTION_NOT_PERMITTED);
        }
        let key_type = object
            .number(CKA_KEY_TYPE)
            .ok_or(Ckr::KEY_TYPE_INCONSISTENT)?;
        let scheme = Scheme::resolve(mechanism, param, key_type)?;
        Ok((key, key_type, scheme))
    }

    /// `C_SignInit`.
    pub fn sign_init(
        &mut self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        param: &Param,
        handle: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let busy = self.session(session)?.sign.is_some();
        let (key, _, scheme) = self.operation_key(
            session,
            busy,
            handle,
            (CKO_PRIVATE_KEY, CKA_SIGN),
            (mechanism, param),
        )?;
        let private = self.private_key(&key)?;
        self.session_mut(session)?.sign = Some(KeyedOp::new(scheme, private));
        Ok(())
    }

    /// The signature length of the active sign operation (for size
    /// queries; the operation stays active).
    pub fn sign_len(&mut self, session: CK_SESSION_HANDLE) -> Result<usize> {
        let op = self
            .session(session)?
            .sign
            .as_ref()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        mechanisms::signature_len(&op.key)
    }

    /// `C_Sign`: signs `data` and ends the operation, whatever the outcome.
    pub fn sign(&mut self, session: CK_SESSION_HANDLE, data: &[u8]) -> Result<Vec<u8>> {
        let op = SignOp::take_single_part(&mut self.session_mut(session)?.sign)?;
        mechanisms::sign(op.scheme, &op.key, data)
    }

    /// `C_SignUpdate`.
    pub fn sign_update(&mut self, session: CK_SESSION_HANDLE, part: &[u8]) -> Result<()> {
        SignOp::update(&mut self.session_mut(session)?.sign, part)
    }

    /// `C_SignFinal`: signs everything passed to `C_SignUpdate`.
    pub fn sign_final(&mut self, session: CK_SESSION_HANDLE) -> Result<Vec<u8>> {
        let op = SignOp::take_final(&mut self.session_mut(session)?.sign)?;
        mechanisms::sign(op.scheme, &op.key, &op.data)
    }

    // ----- verify --------------------------------------------------------------

    /// `C_VerifyInit`.
    pub fn verify_init(
        &mut self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        param: &Param,
        handle: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let busy = self.session(session)?.verify.is_some();
        let (key, key_type, scheme) = self.operation_key(
            session,
            busy,
            handle,
            (CKO_PUBLIC_KEY, CKA_VERIFY),
            (mechanism, param),
        )?;
        let object = self.object(&key)?;
        let public = mechanisms::public_key(key_type, |attribute| {
            object.get(attribute).map(<[u8]>::to_vec)
        })?;
        self.session_mut(session)?.verify = Some(KeyedOp::new(scheme, public));
        Ok(())
    }

    /// `C_Verify`: ends the operation.
    pub fn verify(
        &mut self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        let op = VerifyOp::take_single_part(&mut self.session_mut(session)?.verify)?;
        mechanisms::verify(op.scheme, &op.key, data, signature)
    }

    /// `C_VerifyUpdate`.
    pub fn verify_update(&mut self, session: CK_SESSION_HANDLE, part: &[u8]) -> Result<()> {
        VerifyOp::update(&mut self.session_mut(session)?.verify, part)
    }

    /// `C_VerifyFinal`.
    pub fn verify_final(&mut self, session: CK_SESSION_HANDLE, signature: &[u8]) -> Result<()> {
        let op = VerifyOp::take_final(&mut self.session_mut(session)?.verify)?;
        mechanisms::verify(op.scheme, &op.key, &op.data, signature)
    }

    // ----- digest ----------------------------------------------------------------

    /// `C_DigestInit`.
    pub fn digest_init(
        &mut self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        param: &Param,
    ) -> Result<()> {
        let session = self.session_mut(session)?;
        if session.digest.is_some() {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        let digest = Digest::of_mechanism(mechanism).ok_or(Ckr::MECHANISM_INVALID)?;
        if !matches!(param, Param::None)
            && !matches!(param, Param::Other(bytes) if bytes.is_empty())
        {
            return Err(Ckr::MECHANISM_PARAM_INVALID);
        }
        session.digest = Some(DigestOp {
            digest,
            data: Vec::new(),
            multi_part: false,
        });
        Ok(())
    }

    /// The digest length of the active digest operation.
    pub fn digest_len(&mut self, session: CK_SESSION_HANDLE) -> Result<usize> {
        let op = self
            .session(session)?
            .digest
            .as_ref()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        Ok(op.digest.output_len())
    }

    /// `C_Digest`: ends the operation.
    pub fn digest(&mut self, session: CK_SESSION_HANDLE, data: &[u8]) -> Result<Vec<u8>> {
        let op = self
            .session_mut(session)?
            .digest
            .take()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        if op.multi_part {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        op.digest.hash(data)
    }

    /// `C_DigestUpdate`.
    pub fn digest_update(&mut self, session: CK_SESSION_HANDLE, part: &[u8]) -> Result<()> {
        let op = self
            .session_mut(session)?
            .digest
            .as_mut()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        op.multi_part = true;
        op.data.extend_from_slice(part);
        Ok(())
    }

    /// `C_DigestFinal`.
    pub fn digest_final(&mut self, session: CK_SESSION_HANDLE) -> Result<Vec<u8>> {
        let op = self
            .session_mut(session)?
            .digest
            .take()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        op.digest.hash(&op.data)
    }

    // ----- random ------------------------------------------------------------------

    /// `C_GenerateRandom`.
    pub fn generate_random(&mut self, session: CK_SESSION_HANDLE, buffer: &mut [u8]) -> Result<()> {
        self.session(session)?;
        mechanisms::random_bytes(buffer)
    }

    /// Checks a session for `C_SeedRandom` (the seeding itself is in ffi).
    pub fn check_session(&mut self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.session(session).map(|_| ())
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

#[cfg(test)]
mod tests {
    use super::*;

    const SO_PIN: &[u8] = b"so-pin-1";
    const USER_PIN: &[u8] = b"user-pin-1";
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

    fn module(dir: &Path) -> Module {
        let mut config = Config::resolve(Some(dir.to_path_buf()), None).expect("config");
        config.kdf_iterations = 10;
        Module::new(config)
    }

    /// A module with one initialised token and a logged-in RW session.
    fn ready(dir: &Path) -> (Module, CK_SLOT_ID, CK_SESSION_HANDLE) {
        let mut module = module(dir);
        let free = *module.slot_list(true).last().expect("free slot");
        module.init_token(free, SO_PIN, "test").expect("init token");
        let session = module
            .open_session(free, CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .expect("session");
        module.login(session, CKU_SO, SO_PIN).expect("SO login");
        module.init_pin(session, USER_PIN).expect("init PIN");
        module.logout(session).expect("logout");
        module
            .login(session, CKU_USER, USER_PIN)
            .expect("user login");
        (module, free, session)
    }

    fn key_pair(
        module: &mut Module,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        public_extra: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>,
        sensitive: bool,
        label: &str,
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let mut public = vec![
            (CKA_TOKEN, boolean(true)),
            (CKA_LABEL, label.as_bytes().to_vec()),
        ];
        public.extend(public_extra);
        let private = vec![
            (CKA_TOKEN, boolean(true)),
            (CKA_PRIVATE, boolean(true)),
            (CKA_SENSITIVE, boolean(sensitive)),
            (CKA_EXTRACTABLE, boolean(!sensitive)),
            (CKA_SIGN, boolean(true)),
            (CKA_DECRYPT, boolean(false)),
            (CKA_LABEL, label.as_bytes().to_vec()),
        ];
        module.generate_key_pair(
            session,
            mechanism,
            &Param::None,
            &Template(public),
            &Template(private),
        )
    }

    /// A token key pair on `curve` (EC or Ed25519 parameters) that must
    /// generate.
    fn curve_pair(
        module: &mut Module,
        session: CK_SESSION_HANDLE,
        curve: &[u8],
        sensitive: bool,
        label: &str,
    ) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
        let mechanism = if curve == ED25519 {
            CKM_EC_EDWARDS_KEY_PAIR_GEN
        } else {
            CKM_EC_KEY_PAIR_GEN
        };
        key_pair(
            module,
            session,
            mechanism,
            vec![(CKA_EC_PARAMS, curve.to_vec())],
            sensitive,
            label,
        )
        .expect("keygen")
    }

    fn sign_and_verify(
        module: &mut Module,
        session: CK_SESSION_HANDLE,
        keys: (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE),
        mechanism: CK_MECHANISM_TYPE,
        param: &Param,
        data: &[u8],
    ) {
        module
            .sign_init(session, mechanism, param, keys.1)
            .expect("sign init");
        let len = module
            .sign_len(session)
            .expect("length query keeps the operation");
        let signature = module.sign(session, data).expect("sign");
        assert_eq!(signature.len(), len, "mechanism {mechanism:#x}");
        module
            .verify_init(session, mechanism, param, keys.0)
            .expect("verify init");
        module.verify(session, data, &signature).expect("verify");
        let mut forged = signature;
        forged[1] ^= 0x40;
        module
            .verify_init(session, mechanism, param, keys.0)
            .expect("verify init");
        assert_eq!(
            module.verify(session, data, &forged),
            Err(Ckr::SIGNATURE_INVALID)
        );
    }

    #[test]
    fn ok_free_slot_follows_initialised_tokens() {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut module = module(temp.path());
        assert_eq!(module.slot_list(true), vec![0]);
        assert_eq!(
            module.token_info(0).expect("info").flags & CKF_TOKEN_INITIALIZED,
            0
        );
        assert_eq!(
            module.open_session(0, CKF_SERIAL_SESSION),
            Err(Ckr::TOKEN_NOT_RECOGNIZED)
        );
        module.init_token(0, SO_PIN, "first").expect("init");
        assert_eq!(module.slot_list(true), vec![0, 1]);
        let info = module.token_info(0).expect("info");
        assert_eq!(info.label, "first");
        assert_ne!(info.flags & CKF_TOKEN_INITIALIZED, 0);
        assert_eq!(info.flags & CKF_USER_PIN_INITIALIZED, 0);
        assert_eq!(module.slot_info(7), Err(Ckr::SLOT_ID_INVALID));
    }

    #[test]
    fn fail_login_with_wrong_pin_or_twice() {
        let temp = tempfile::tempdir().expect("tempdir");
        let (mut module, slot, session) = ready(temp.path());
        assert_eq!(
            module.login(session, CKU_USER, USER_PIN),
            Err(Ckr::USER_ALREADY_LOGGED_IN)
        );
        assert_eq!(
            module.login(session, CKU_SO, SO_PIN),
            Err(Ckr::USER_ANOTHER_ALREADY_LOGGED_IN)
        );
        module.logout(session).expect("logout");
        assert_eq!(module.logout(session), Err(Ckr::USER_NOT_LOGGED_IN));
        assert_eq!(
            module.login(session, CKU_USER, b"wrong-pin"),
            Err(Ckr::PIN_INCORRECT)
        );
        assert_eq!(
            module.login(session, CKU_SO, USER_PIN),
            Err(Ckr::PIN_INCORRECT)
        );
        assert_eq!(
            module.session_info(session).expect("info").state,
            CKS_RW_PUBLIC_SESSION
        );
        // An RO session blocks SO login.
        let read_only = module
            .open_session(slot, CKF_SERIAL_SESSION)
            .expect("ro session");
        assert_eq!(
            module.login(session, CKU_SO, SO_PIN),
            Err(Ckr::SESSION_READ_ONLY_EXISTS)
        );
        module.login(read_only, CKU_USER, USER_PIN).expect("login");
        // Login is per token: the other session is logged in too.
        assert_eq!(
            module.session_info(session).expect("info").state,
            CKS_RW_USER_FUNCTIONS
        );
        assert_eq!(
            module.session_info(read_only).expect("info").state,
            CKS_RO_USER_FUNCTIONS
        );
        // Closing every session logs out.
        module.close_all_sessions(slot).expect("close all");
        let again = module
            .open_session(slot, CKF_SERIAL_SESSION)
            .expect("session");
        assert_eq!(
            module.session_info(again).expect("info").state,
            CKS_RO_PUBLIC_SESSION
        );
        assert_eq!(
            module.session_info(session),
            Err(Ckr::SESSION_HANDLE_INVALID)
        );
    }

    #[test]
    fn ok_set_pin_changes_the_user_pin() {
        let temp = tempfile::tempdir().expect("tempdir");
        let (mut module, _, session) = ready(temp.path());
        assert_eq!(
            module.set_pin(session, b"wrong-pin", b"new-pin-2"),
            Err(Ckr::PIN_INCORRECT)
        );
        assert_eq!(
            module.set_pin(session, USER_PIN, b"123"),
            Err(Ckr::PIN_LEN_RANGE)
        );
        module
            .set_pin(session, USER_PIN, b"new-pin-2")
            .expect("set PIN");
        module.logout(session).expect("logout");
        assert_eq!(
            module.login(session, CKU_USER, USER_PIN),
            Err(Ckr::PIN_INCORRECT)
        );
        module
            .login(session, CKU_USER, b"new-pin-2")
            .expect("new PIN works");
    }

    #[test]
    fn ok_keygen_template_and_sensitive_refusal() {
        let temp = tempfile::tempdir().expect("tempdir");
        let (mut module, _, session) = ready(temp.path());
        let (public, private) = curve_pair(&mut module, session, P256, true, "ca");
        let values = module
            .attribute_values(
                session,
                private,
                &[
                    CKA_VALUE,
                    CKA_SENSITIVE,
                    CKA_EXTRACTABLE,
                    CKA_ALWAYS_SENSITIVE,
                    CKA_NEVER_EXTRACTABLE,
                    CKA_LOCAL,
                    CKA_EC_POINT,
                    0x8765_4321,
                ],
            )
            .expect("attributes");
        assert_eq!(
            values,
            vec![
                AttributeValue::Sensitive,
                AttributeValue::Value(vec![1]),
                AttributeValue::Value(vec![0]),
                AttributeValue::Value(vec![1]),
                AttributeValue::Value(vec![1]),
                AttributeValue::Value(vec![1]),
                AttributeValue::Invalid,
                AttributeValue::Invalid,
            ]
        );
        let point = module
            .attribute_values(session, public, &[CKA_EC_POINT, CKA_KEY_TYPE])
            .expect("public");
        assert!(
            matches!(&point[0], AttributeValue::Value(bytes) if bytes.len() == 67 && bytes[0] == 0x04)
        );
        assert_eq!(point[1], AttributeValue::Value(ulong(CKK_EC)));
        // The key stays sensitive.
        let loosen = Template(vec![(CKA_SENSITIVE, boolean(false))]);
        assert_eq!(
            module.set_attribute_values(session, private, &loosen),
            Err(Ckr::ATTRIBUTE_READ_ONLY)
        );
        let relabel = Template(vec![(CKA_LABEL, b"renamed".to_vec())]);
        module
            .set_attribute_values(session, private, &relabel)
            .expect("relabel");
        // Templates the token must refuse.
        let computed = vec![
            (CKA_EC_PARAMS, P256.to_vec()),
            (CKA_EC_POINT, vec![4, 1, 0]),
        ];
        assert_eq!(
            key_pair(
                &mut module,
                session,
                CKM_EC_KEY_PAIR_GEN,
                computed,
                true,
                "bad"
            ),
            Err(Ckr::ATTRIBUTE_READ_ONLY)
        );
        let wrong_class = vec![
            (CKA_EC_PARAMS, P256.to_vec()),
            (CKA_CLASS, ulong(CKO_PRIVATE_KEY)),
        ];
        assert_eq!(
            key_pair(
                &mut module,
                session,
                CKM_EC_KEY_PAIR_GEN,
                wrong_class,
                true,
                "bad"
            ),
            Err(Ckr::TEMPLATE_INCONSISTENT)
        );
        // A token key needs a login.
        module.logout(session).expect("logout");
        assert_eq!(
            key_pair(
                &mut module,
                session,
                CKM_EC_KEY_PAIR_GEN,
                vec![(CKA_EC_PARAMS, P256.to_vec())],
                true,
                "x"
            ),
            Err(Ckr::USER_NOT_LOGGED_IN)
        );
    }

    #[test]
    fn ok_extractable_key_reveals_value_sensitive_does_not() {
        let temp = tempfile::tempdir().expect("tempdir");
        let (mut module, _, session) = ready(temp.path());
        let (_, open) = curve_pair(&mut module, session, ED25519, false, "o");
        let value = module
            .attribute_values(session, open, &[CKA_VALUE])
            .expect("value");
        assert!(matches!(&value[0], AttributeValue::Value(bytes) if bytes.len() == 32));
        let (_, closed) = curve_pair(&mut module, session, ED25519, true, "c");
        assert_eq!(
            module
                .attribute_values(session, closed, &[CKA_VALUE])
                .expect("value"),
            vec![AttributeValue::Sensitive]
        );
    }

    #[test]
    fn ok_find_sees_private_objects_only_when_logged_in() {
        let temp = tempfile::tempdir().expect("tempdir");
        let (mut module, _, session) = ready(temp.path());
        let (public, private) = curve_pair(&mut module, session, P256, true, "k");
        let by_label = Template(vec![(CKA_LABEL, b"k".to_vec())]);
        module.find_init(session, &by_label).expect("find init");
        assert_eq!(
            module.find_init(session, &by_label),
            Err(Ckr::OPERATION_ACTIVE)
        );
        let mut found = module.find(session, 1).expect("find");
        found.extend(module.find(session, 10).expect("find"));
        assert!(module.find(session, 10).expect("find").is_empty());
        module.find_final(session).expect("final");
        found.sort_unstable();
        let mut expected = vec![public, private];
        expected.sort_unstable();
        assert_eq!(found, expected);
        module.logout(session).expect("logout");
        module.find_init(session, &by_label).expect("find init");
        assert_eq!(module.find(session, 10).expect("find"), vec![public]);
        module.find_final(session).expect("final");
        assert_eq!(
            module.attribute_values(session, private, &[CKA_LABEL]),
            Err(Ckr::OBJECT_HANDLE_INVALID)
        );
    }

    #[test]
    fn ok_sign_and_verify_round_trip_per_mechanism() {
        let temp = tempfile::tempdir().expect("tempdir");
        let (mut module, _, session) = ready(temp.path());
        let digest = Digest::Sha256.hash(b"data").expect("hash");
        for params in [P256, P384] {
            let keys = curve_pair(&mut module, session, params, true, "ec");
            sign_and_verify(&mut module, session, keys, CKM_ECDSA, &Param::None, &digest);
            for mechanism in [CKM_ECDSA_SHA256, CKM_ECDSA_SHA384, CKM_ECDSA_SHA512] {
                sign_and_verify(&mut module, session, keys, mechanism, &Param::None, b"data");
            }
        }
        let keys = curve_pair(&mut module, session, ED25519, true, "ed");
        sign_and_verify(&mut module, session, keys, CKM_EDDSA, &Param::None, b"data");
        let keys = key_pair(
            &mut module,
            session,
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            vec![(CKA_MODULUS_BITS, ulong(2048))],
            true,
            "rsa",
        )
        .expect("keygen");
        for mechanism in [
            CKM_SHA256_RSA_PKCS,
            CKM_SHA384_RSA_PKCS,
            CKM_SHA512_RSA_PKCS,
            CKM_RSA_PKCS,
        ] {
            sign_and_verify(&mut module, session, keys, mechanism, &Param::None, &digest);
        }
        let pss = |hash| Param::Pss {
            hash,
            mgf: CKG_MGF1_SHA256,
            salt_len: 32,
        };
        sign_and_verify(
            &mut module,
            session,
            keys,
            CKM_SHA256_RSA_PKCS_PSS,
            &pss(CKM_SHA256),
            b"data",
        );
        sign_and_verify(
            &mut module,
            session,
            keys,
            CKM_RSA_PKCS_PSS,
            &pss(CKM_SHA256),
            &digest,
        );
        // Multi-part signing gives a signature the single-part verify accepts.
        module
            .sign_init(session, CKM_SHA256_RSA_PKCS, &Param::None, keys.1)
            .expect("init");
        module.sign_update(session, b"da").expect("update");
        module.sign_update(session, b"ta").expect("update");
        let signature = module.sign_final(session).expect("final");
        module
            .verify_init(session, CKM_SHA256_RSA_PKCS, &Param::None, keys.0)
            .expect("init");
        module.verify(session, b"data", &signature).expect("verify");
        // Wrong key type and a finished operation.
        assert_eq!(
            module.sign_init(session, CKM_ECDSA, &Param::None, keys.1),
            Err(Ckr::KEY_TYPE_INCONSISTENT)
        );
        assert_eq!(
            module.sign(session, b"x"),
            Err(Ckr::OPERATION_NOT_INITIALIZED)
        );
        assert_eq!(
            module.sign_init(session, CKM_SHA256_RSA_PKCS, &Param::None, keys.0),
            Err(Ckr::KEY_TYPE_INCONSISTENT)
        );
    }

    #[test]
    fn ok_digest_matches_openssl() {
        let temp = tempfile::tempdir().expect("tempdir");
        let (mut module, _, session) = ready(temp.path());
        module
            .digest_init(session, CKM_SHA384, &Param::None)
            .expect("init");
        assert_eq!(module.digest_len(session), Ok(48));
        let digest = module.digest(session, b"abc").expect("digest");
        let expected =
            openssl::hash::hash(openssl::hash::MessageDigest::sha384(), b"abc").expect("hash");
        assert_eq!(digest, expected.to_vec());
        assert_eq!(
            module.digest_init(session, CKM_MD5, &Param::None),
            Err(Ckr::MECHANISM_INVALID)
        );
    }

    #[test]
    fn ok_token_objects_persist_and_are_sealed() {
        let temp = tempfile::tempdir().expect("tempdir");
        let point = {
            let (mut module, _, session) = ready(temp.path());
            let (public, _) = curve_pair(&mut module, session, P384, true, "ca");
            let point = module
                .attribute_values(session, public, &[CKA_EC_POINT])
                .expect("point");
            // A session object disappears with its session.
            let session_object = Template(vec![
                (CKA_CLASS, ulong(CKO_DATA)),
                (CKA_LABEL, b"temp".to_vec()),
            ]);
            module
                .create_object(session, &session_object)
                .expect("create");
            point
        };
        let mut module = module(temp.path());
        let slot = module.slot_list(true)[0];
        let session = module
            .open_session(slot, CKF_SERIAL_SESSION)
            .expect("session");
        module.login(session, CKU_USER, USER_PIN).expect("login");
        module
            .find_init(session, &Template(vec![(CKA_LABEL, b"ca".to_vec())]))
            .expect("find");
        let found = module.find(session, 10).expect("find");
        module.find_final(session).expect("final");
        assert_eq!(found.len(), 2);
        module
            .find_init(session, &Template(vec![(CKA_LABEL, b"temp".to_vec())]))
            .expect("find");
        assert!(module.find(session, 10).expect("find").is_empty());
        module.find_final(session).expect("final");
        // Handles are per module instance; look the keys up again by class.
        let class_of = |module: &mut Module, handle| {
            module
                .attribute_values(session, handle, &[CKA_CLASS])
                .expect("class")
        };
        let (mut new_public, mut new_private) = (0, 0);
        for handle in found {
            if class_of(&mut module, handle) == vec![AttributeValue::Value(ulong(CKO_PUBLIC_KEY))] {
                new_public = handle;
            } else {
                new_private = handle;
            }
        }
        assert_ne!((new_public, new_private), (0, 0));
        assert_eq!(
            module
                .attribute_values(session, new_public, &[CKA_EC_POINT])
                .expect("point"),
            point
        );
        sign_and_verify(
            &mut module,
            session,
            (new_public, new_private),
            CKM_ECDSA_SHA384,
            &Param::None,
            b"after reopen",
        );
        // On disk: one sealed secret, and no private value as an attribute.
        let serial = module.token_info(slot).expect("info").serial;
        let record = module.store.read(&serial).expect("record");
        let sealed_count = record
            .objects
            .values()
            .filter(|object| object.secret.is_some())
            .count();
        assert_eq!(sealed_count, 1);
        assert!(record
            .objects
            .values()
            .all(|object| object.get(CKA_VALUE).is_none()));
    }

    #[test]
    fn ok_device_removal_closes_sessions_and_session_limit_applies() {
        let temp = tempfile::tempdir().expect("tempdir");
        let (mut module, slot, session) = ready(temp.path());
        module.set_device_removed(true);
        assert_eq!(module.session_info(session), Err(Ckr::DEVICE_REMOVED));
        assert!(module.slot_list(true).is_empty());
        assert!(!module.slot_info(slot).expect("slot").token_present);
        assert_eq!(
            module.open_session(slot, CKF_SERIAL_SESSION),
            Err(Ckr::TOKEN_NOT_PRESENT)
        );
        module.set_device_removed(false);
        assert_eq!(
            module.session_info(session),
            Err(Ckr::SESSION_HANDLE_INVALID)
        );
        module.set_session_limit(Some(1));
        let only = module
            .open_session(slot, CKF_SERIAL_SESSION)
            .expect("first");
        assert_eq!(
            module.open_session(slot, CKF_SERIAL_SESSION),
            Err(Ckr::SESSION_COUNT)
        );
        assert_eq!(module.token_info(slot).expect("info").max_sessions, Some(1));
        // The removal logged the token out.
        assert_eq!(
            module.session_info(only).expect("info").state,
            CKS_RO_PUBLIC_SESSION
        );
    }

    #[test]
    fn ok_create_certificate_and_public_key_objects() {
        let temp = tempfile::tempdir().expect("tempdir");
        let (mut module, _, session) = ready(temp.path());
        let certificate = Template(vec![
            (CKA_CLASS, ulong(CKO_CERTIFICATE)),
            (CKA_TOKEN, boolean(true)),
            (CKA_VALUE, vec![0x30, 0x03, 0x02, 0x01, 0x01]),
            (CKA_LABEL, b"cert".to_vec()),
        ]);
        let handle = module
            .create_object(session, &certificate)
            .expect("certificate");
        assert_eq!(
            module
                .attribute_values(session, handle, &[CKA_VALUE])
                .expect("value"),
            vec![AttributeValue::Value(vec![0x30, 0x03, 0x02, 0x01, 0x01])]
        );
        let (public, _) = curve_pair(&mut module, session, P256, true, "k");
        let point = match module
            .attribute_values(session, public, &[CKA_EC_POINT])
            .expect("point")
            .remove(0)
        {
            AttributeValue::Value(bytes) => bytes,
            other => panic!("no point: {other:?}"),
        };
        let imported = Template(vec![
            (CKA_CLASS, ulong(CKO_PUBLIC_KEY)),
            (CKA_KEY_TYPE, ulong(CKK_EC)),
            (CKA_EC_PARAMS, P256.to_vec()),
            (CKA_EC_POINT, point),
        ]);
        module
            .create_object(session, &imported)
            .expect("public key");
        let garbage = Template(vec![
            (CKA_CLASS, ulong(CKO_PUBLIC_KEY)),
            (CKA_KEY_TYPE, ulong(CKK_EC)),
            (CKA_EC_PARAMS, P256.to_vec()),
            (CKA_EC_POINT, vec![4, 2, 1, 2]),
        ]);
        assert_eq!(
            module.create_object(session, &garbage),
            Err(Ckr::TEMPLATE_INCONSISTENT)
        );
        let private = Template(vec![(CKA_CLASS, ulong(CKO_PRIVATE_KEY))]);
        assert_eq!(
            module.create_object(session, &private),
            Err(Ckr::ATTRIBUTE_VALUE_INVALID)
        );
        module.destroy_object(session, handle).expect("destroy");
        assert_eq!(
            module.attribute_values(session, handle, &[CKA_VALUE]),
            Err(Ckr::OBJECT_HANDLE_INVALID)
        );
    }
}
