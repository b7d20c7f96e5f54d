//! Sessions and login: opening and closing sessions, login state, and
//! the user and SO PINs.

use cryptoki_sys::*;

use crate::error::{Ckr, Result};
use crate::store::{self, PinRole};

use super::{check_pin_len, Login, Module, Session, SessionInfo};

impl Module {
    // ----- sessions ------------------------------------------------------

    pub(super) fn session(&self, handle: CK_SESSION_HANDLE) -> Result<&Session> {
        if self.removed {
            return Err(Ckr::DEVICE_REMOVED);
        }
        self.sessions
            .get(&handle)
            .ok_or(Ckr::SESSION_HANDLE_INVALID)
    }

    pub(super) fn session_mut(&mut self, handle: CK_SESSION_HANDLE) -> Result<&mut Session> {
        if self.removed {
            return Err(Ckr::DEVICE_REMOVED);
        }
        self.sessions
            .get_mut(&handle)
            .ok_or(Ckr::SESSION_HANDLE_INVALID)
    }

    /// The serial of the session's token, refreshing the token.
    pub(super) fn session_token(&mut self, handle: CK_SESSION_HANDLE) -> Result<(String, bool)> {
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
}
