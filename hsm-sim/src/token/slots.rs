//! Slots and tokens: the slot list, token discovery and re-reading, the
//! locked read-modify-write of a token record, and `C_InitToken`.

use std::collections::BTreeMap;

use cryptoki_sys::*;

use crate::error::{Ckr, Result};
use crate::faults::FileStamp;
use crate::mechanisms;
use crate::store::{self, PinRole, TokenRecord};

use super::{check_pin_len, Module, SlotInfo, Token, TokenInfo};

impl Module {
    // ----- slots and tokens ----------------------------------------------

    /// Picks up tokens created by other processes and assigns slot ids.
    pub(super) fn scan(&mut self) {
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
    pub(super) fn slot(&mut self, slot: CK_SLOT_ID) -> Result<Option<String>> {
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
    pub(super) fn token(&mut self, serial: &str) -> Result<&mut Token> {
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
    pub(super) fn modify<T>(
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
}
