//! The PKCS#11 v2.40 C ABI: `C_GetFunctionList` and every `C_*` function.
//!
//! This is the only module with `unsafe` code. Each exported function:
//! 1. runs inside [`guard`], which catches panics (a panic must never cross
//!    the C boundary) and converts the internal `Result<(), Ckr>` into a
//!    `CK_RV` in one place;
//! 2. goes through [`dispatch`], which applies the faults in force (delay
//!    outside every lock, then the device state, then an injected return
//!    code) before the real call, so every function can be made to fail;
//! 3. checks every pointer and length before use, copies arguments into
//!    owned Rust values, calls [`Module`], and copies results out following
//!    the PKCS#11 output conventions (size query with a null buffer,
//!    `CKR_BUFFER_TOO_SMALL` with the needed length).
//!
//! Thread safety: one [`Module`] per `C_Initialize`, behind a mutex, so
//! applications may call from any thread (`CKF_OS_LOCKING_OK`). Injected
//! latency is slept before that mutex is taken, so slow calls overlap as
//! they would on a real HSM. Functions outside the supported set return
//! `CKR_FUNCTION_NOT_SUPPORTED`.
#![expect(
    unsafe_code,
    reason = "the PKCS#11 C ABI: raw pointers from the application"
)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use cryptoki_sys::*;

use crate::config::Config;
use crate::error::{Ckr, Result};
use crate::faults::FaultWatch;
use crate::mechanisms::{is_pss, random_unit, Param};
use crate::object::Template;
use crate::token::{AttributeValue, Module};

/// What `C_Initialize` creates and `C_Finalize` drops.
struct Instance {
    module: Mutex<Module>,
    faults: Mutex<FaultWatch>,
}

static INSTANCE: RwLock<Option<Arc<Instance>>> = RwLock::new(None);

/// Locks a mutex, ignoring poisoning: a panic inside a call is caught and
/// reported as `CKR_GENERAL_ERROR`; the model stays memory-safe and the
/// next call proceeds.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `body`, catching panics, and converts its result to a `CK_RV`.
fn guard(body: impl FnOnce() -> Result<()>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(code)) => code.0,
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// Applies the faults in force for `function`, then runs `body` on the
/// module.
fn dispatch(function: &'static str, body: impl FnOnce(&mut Module) -> Result<()>) -> CK_RV {
    dispatch_in(function, None, body)
}

/// [`dispatch`] for a call on `session` whose failure ends an operation.
fn dispatch_operation(
    function: &'static str,
    session: CK_SESSION_HANDLE,
    body: impl FnOnce(&mut Module) -> Result<()>,
) -> CK_RV {
    dispatch_in(function, Some(session), body)
}

fn dispatch_in(
    function: &'static str,
    session: Option<CK_SESSION_HANDLE>,
    body: impl FnOnce(&mut Module) -> Result<()>,
) -> CK_RV {
    guard(|| {
        let instance = INSTANCE
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Ckr::CRYPTOKI_NOT_INITIALIZED)?;
        let decision = lock(&instance.faults)
            .current()
            .decide(function, random_unit);
        if !decision.delay.is_zero() {
            std::thread::sleep(decision.delay);
        }
        let mut module = lock(&instance.module);
        module.set_device_removed(decision.device_removed);
        module.set_session_limit(decision.session_limit);
        if let Some(code) = decision.fail {
            if let Some(session) = session {
                module.abort_after_failure(session, function);
            }
            return Err(code);
        }
        body(&mut module)
    })
}

// ----- pointer helpers ------------------------------------------------------

fn to_usize(value: CK_ULONG) -> Result<usize> {
    usize::try_from(value).map_err(|_| Ckr::ARGUMENTS_BAD)
}

fn to_ulong(value: usize) -> Result<CK_ULONG> {
    CK_ULONG::try_from(value).map_err(|_| Ckr::GENERAL_ERROR)
}

/// Borrows an input buffer.
///
/// # Safety
/// `pointer` is null or valid for reads of `len` bytes for `'a`.
unsafe fn input<'a>(pointer: *const u8, len: CK_ULONG) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if pointer.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let len = to_usize(len)?;
    // SAFETY: non-null, and the caller guarantees `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(pointer, len) })
}

/// Borrows an output buffer.
///
/// # Safety
/// `pointer` is null or valid for writes of `len` bytes for `'a`.
unsafe fn output<'a>(pointer: *mut u8, len: CK_ULONG) -> Result<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if pointer.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let len = to_usize(len)?;
    // SAFETY: non-null, and the caller guarantees `len` writable bytes that
    // nothing else accesses during the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(pointer, len) })
}

/// Reads a value the application passed by pointer.
///
/// # Safety
/// `pointer` is null or valid for reads of one `T`.
unsafe fn read<T: Copy>(pointer: *const T) -> Result<T> {
    if pointer.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: non-null and readable per the caller; unaligned reads are
    // accepted so a careless caller cannot cause undefined behaviour here.
    Ok(unsafe { pointer.read_unaligned() })
}

/// Writes a result through an application pointer.
///
/// # Safety
/// `pointer` is null or valid for writes of one `T`.
unsafe fn write<T>(pointer: *mut T, value: T) -> Result<()> {
    if pointer.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: non-null and writable per the caller.
    unsafe { pointer.write_unaligned(value) };
    Ok(())
}

/// The PKCS#11 convention for variable-length byte output: a null buffer
/// asks for the length; a short buffer gets `CKR_BUFFER_TOO_SMALL` and the
/// length; otherwise `produce` runs and its bytes are copied out.
///
/// # Safety
/// `out_len` is null or valid for reads and writes of a `CK_ULONG`; `out`
/// is null or valid for writes of `*out_len` bytes.
unsafe fn output_bytes(
    out: *mut u8,
    out_len: *mut CK_ULONG,
    len: usize,
    produce: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<()> {
    // SAFETY: per this function's contract.
    let capacity = unsafe { read(out_len) }?;
    if out.is_null() {
        // SAFETY: per this function's contract.
        return unsafe { write(out_len, to_ulong(len)?) };
    }
    if to_usize(capacity)? < len {
        // SAFETY: per this function's contract.
        unsafe { write(out_len, to_ulong(len)?) }?;
        return Err(Ckr::BUFFER_TOO_SMALL);
    }
    let data = produce()?;
    // SAFETY: `out` holds `capacity` writable bytes per the contract.
    let buffer = unsafe { output(out, capacity) }?;
    let target = buffer.get_mut(..data.len()).ok_or(Ckr::GENERAL_ERROR)?;
    target.copy_from_slice(&data);
    // SAFETY: per this function's contract.
    unsafe { write(out_len, to_ulong(data.len())?) }
}

/// The PKCS#11 convention for list output (`C_GetSlotList`, …).
///
/// # Safety
/// `count` is null or valid for reads and writes of a `CK_ULONG`; `list`
/// is null or valid for writes of `*count` items.
unsafe fn output_list<T: Copy>(list: *mut T, count: *mut CK_ULONG, items: &[T]) -> Result<()> {
    // SAFETY: per this function's contract.
    let capacity = unsafe { read(count) }?;
    // SAFETY: per this function's contract.
    unsafe { write(count, to_ulong(items.len())?) }?;
    if list.is_null() {
        return Ok(());
    }
    if to_usize(capacity)? < items.len() {
        return Err(Ckr::BUFFER_TOO_SMALL);
    }
    if !items.is_empty() {
        // SAFETY: `list` holds at least `capacity >= items.len()` items.
        let target = unsafe { std::slice::from_raw_parts_mut(list, items.len()) };
        target.copy_from_slice(items);
    }
    Ok(())
}

/// Copies an attribute template in.
///
/// # Safety
/// `template` is null or valid for reads of `count` attributes, each of
/// whose `pValue` is null or valid for reads of `ulValueLen` bytes.
unsafe fn template(template: *const CK_ATTRIBUTE, count: CK_ULONG) -> Result<Template> {
    if count == 0 {
        return Ok(Template::default());
    }
    if template.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: non-null, `count` readable attributes per the contract.
    let attributes = unsafe { std::slice::from_raw_parts(template, to_usize(count)?) };
    let mut entries = Vec::with_capacity(attributes.len());
    for attribute in attributes {
        // SAFETY: each value is readable per the contract.
        let value = unsafe { input(attribute.pValue.cast::<u8>(), attribute.ulValueLen) }?;
        entries.push((attribute.type_, value.to_vec()));
    }
    Ok(Template(entries))
}

/// Copies a mechanism and its parameter in.
///
/// # Safety
/// `mechanism` is null or valid for reads of a `CK_MECHANISM` whose
/// parameter is null or valid for reads of `ulParameterLen` bytes.
unsafe fn mechanism(mechanism: *const CK_MECHANISM) -> Result<(CK_MECHANISM_TYPE, Param)> {
    // SAFETY: per this function's contract.
    let mechanism = unsafe { read(mechanism) }?;
    let kind = mechanism.mechanism;
    let len = to_usize(mechanism.ulParameterLen)?;
    if len == 0 || mechanism.pParameter.is_null() {
        return Ok((kind, Param::None));
    }
    let param = match kind {
        kind if is_pss(kind) => {
            if len != std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>() {
                return Err(Ckr::MECHANISM_PARAM_INVALID);
            }
            // SAFETY: the parameter holds exactly one CK_RSA_PKCS_PSS_PARAMS.
            let pss = unsafe { read(mechanism.pParameter.cast::<CK_RSA_PKCS_PSS_PARAMS>()) }?;
            Param::Pss {
                hash: pss.hashAlg,
                mgf: pss.mgf,
                salt_len: pss.sLen,
            }
        }
        CKM_EDDSA => {
            if len != std::mem::size_of::<CK_EDDSA_PARAMS>() {
                return Err(Ckr::MECHANISM_PARAM_INVALID);
            }
            // SAFETY: the parameter holds exactly one CK_EDDSA_PARAMS.
            let eddsa = unsafe { read(mechanism.pParameter.cast::<CK_EDDSA_PARAMS>()) }?;
            // SAFETY: the context data is readable per the PKCS#11 contract.
            let context = unsafe { input(eddsa.pContextData, eddsa.ulContextDataLen) }?;
            Param::Eddsa {
                prehash: eddsa.phFlag != 0,
                context: context.to_vec(),
            }
        }
        _ => {
            // SAFETY: readable per this function's contract.
            let bytes =
                unsafe { input(mechanism.pParameter.cast::<u8>(), mechanism.ulParameterLen) }?;
            Param::Other(bytes.to_vec())
        }
    };
    Ok((kind, param))
}

/// A blank-padded, fixed-width PKCS#11 string (truncated on a character
/// boundary if too long).
fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut field = [b' '; N];
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if let (Some(target), Some(source)) = (field.get_mut(..end), text.as_bytes().get(..end)) {
        target.copy_from_slice(source);
    }
    field
}

const VERSION: CK_VERSION = CK_VERSION { major: 0, minor: 1 };
const MANUFACTURER: &str = "certmint hsm-sim";

// ----- general purpose ------------------------------------------------------

/// `C_Initialize`: reads the configuration (`HSM_SIM_DIR`,
/// `HSM_SIM_CONFIG`) now, so each initialisation sees the current
/// environment.
#[no_mangle]
unsafe extern "C" fn C_Initialize(init_args: *mut c_void) -> CK_RV {
    guard(|| {
        if !init_args.is_null() {
            // SAFETY: a non-null argument is a CK_C_INITIALIZE_ARGS.
            let args = unsafe { read(init_args.cast::<CK_C_INITIALIZE_ARGS>()) }?;
            if !args.pReserved.is_null() {
                return Err(Ckr::ARGUMENTS_BAD);
            }
            let callbacks = [
                args.CreateMutex.is_some(),
                args.DestroyMutex.is_some(),
                args.LockMutex.is_some(),
                args.UnlockMutex.is_some(),
            ];
            let supplied = callbacks.iter().filter(|given| **given).count();
            if supplied != 0 && supplied != callbacks.len() {
                return Err(Ckr::ARGUMENTS_BAD);
            }
            // Only OS locking is implemented: the application's own mutex
            // callbacks cannot be used in their place.
            if supplied != 0 && args.flags & CKF_OS_LOCKING_OK == 0 {
                return Err(Ckr::CANT_LOCK);
            }
        }
        let mut slot = INSTANCE.write().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return Err(Ckr::CRYPTOKI_ALREADY_INITIALIZED);
        }
        let config = Config::from_env().map_err(|_| Ckr::GENERAL_ERROR)?;
        let faults = FaultWatch::new(config.control_file(), config.config_file.clone());
        *slot = Some(Arc::new(Instance {
            module: Mutex::new(Module::new(config)),
            faults: Mutex::new(faults),
        }));
        Ok(())
    })
}

/// `C_Finalize`: closes every session and forgets every login.
#[no_mangle]
unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    guard(|| {
        if !reserved.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        let mut slot = INSTANCE.write().unwrap_or_else(PoisonError::into_inner);
        slot.take().map(drop).ok_or(Ckr::CRYPTOKI_NOT_INITIALIZED)
    })
}

/// `C_GetInfo`.
#[no_mangle]
unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    dispatch("C_GetInfo", |_| {
        let value = CK_INFO {
            cryptokiVersion: CK_VERSION {
                major: 2,
                minor: 40,
            },
            manufacturerID: padded(MANUFACTURER),
            flags: 0,
            libraryDescription: padded("hsm-sim PKCS#11 HSM simulator"),
            libraryVersion: VERSION,
        };
        // SAFETY: `info` is null or points to a CK_INFO.
        unsafe { write(info, value) }
    })
}

/// `C_GetFunctionList`: the static function table (valid without
/// `C_Initialize`).
#[no_mangle]
unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard(|| {
        // The table is never written through this pointer: PKCS#11 hands it
        // out as non-const only for historical reasons.
        let table = std::ptr::addr_of!(FUNCTION_LIST).cast_mut();
        // SAFETY: `list` is null or points to a CK_FUNCTION_LIST_PTR.
        unsafe { write(list, table) }
    })
}

// ----- slots and tokens -------------------------------------------------------

/// `C_GetSlotList`.
#[no_mangle]
unsafe extern "C" fn C_GetSlotList(
    token_present: CK_BBOOL,
    list: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    dispatch("C_GetSlotList", |module| {
        let slots = module.slot_list(token_present != 0);
        // SAFETY: `count` and `list` follow the PKCS#11 list convention.
        unsafe { output_list(list, count, &slots) }
    })
}

/// `C_GetSlotInfo`.
#[no_mangle]
unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    dispatch("C_GetSlotInfo", |module| {
        if info.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        let slot_info = module.slot_info(slot)?;
        let value = CK_SLOT_INFO {
            slotDescription: padded(&slot_info.description),
            manufacturerID: padded(MANUFACTURER),
            flags: CKF_REMOVABLE_DEVICE
                | if slot_info.token_present {
                    CKF_TOKEN_PRESENT
                } else {
                    0
                },
            hardwareVersion: VERSION,
            firmwareVersion: VERSION,
        };
        // SAFETY: `info` points to a CK_SLOT_INFO.
        unsafe { write(info, value) }
    })
}

/// `C_GetTokenInfo`.
#[no_mangle]
unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    dispatch("C_GetTokenInfo", |module| {
        if info.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        let token = module.token_info(slot)?;
        let max_sessions = token.max_sessions.unwrap_or(CK_EFFECTIVELY_INFINITE);
        let value = CK_TOKEN_INFO {
            label: padded(&token.label),
            manufacturerID: padded(MANUFACTURER),
            model: padded("hsm-sim"),
            serialNumber: padded(&token.serial),
            flags: token.flags,
            ulMaxSessionCount: max_sessions,
            ulSessionCount: token.sessions,
            ulMaxRwSessionCount: max_sessions,
            ulRwSessionCount: token.rw_sessions,
            ulMaxPinLen: to_ulong(crate::token::MAX_PIN_LEN)?,
            ulMinPinLen: to_ulong(crate::token::MIN_PIN_LEN)?,
            ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
            hardwareVersion: VERSION,
            firmwareVersion: VERSION,
            utcTime: [b' '; 16],
        };
        // SAFETY: `info` points to a CK_TOKEN_INFO.
        unsafe { write(info, value) }
    })
}

/// `C_GetMechanismList`.
#[no_mangle]
unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    dispatch("C_GetMechanismList", |module| {
        let mechanisms = module.mechanism_list(slot)?;
        // SAFETY: `count` and `list` follow the PKCS#11 list convention.
        unsafe { output_list(list, count, &mechanisms) }
    })
}

/// `C_GetMechanismInfo`.
#[no_mangle]
unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    kind: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    dispatch("C_GetMechanismInfo", |module| {
        if info.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        let (min, max, flags) = module.mechanism_info(slot, kind)?;
        let value = CK_MECHANISM_INFO {
            ulMinKeySize: min,
            ulMaxKeySize: max,
            flags,
        };
        // SAFETY: `info` points to a CK_MECHANISM_INFO.
        unsafe { write(info, value) }
    })
}

/// `C_InitToken`.
#[no_mangle]
unsafe extern "C" fn C_InitToken(
    slot: CK_SLOT_ID,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
    label: *mut CK_UTF8CHAR,
) -> CK_RV {
    dispatch("C_InitToken", |module| {
        if pin.is_null() || label.is_null() {
            // No protected authentication path: the PIN must be given.
            return Err(Ckr::ARGUMENTS_BAD);
        }
        // SAFETY: `pin` holds `pin_len` bytes.
        let pin = unsafe { input(pin, pin_len) }?;
        // SAFETY: the label is exactly 32 bytes, blank padded.
        let label = unsafe { input(label, 32) }?;
        let label = String::from_utf8_lossy(label);
        module.init_token(slot, pin, &label).map(drop)
    })
}

/// `C_InitPIN`.
#[no_mangle]
unsafe extern "C" fn C_InitPIN(
    session: CK_SESSION_HANDLE,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
) -> CK_RV {
    dispatch("C_InitPIN", |module| {
        if pin.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        // SAFETY: `pin` holds `pin_len` bytes.
        let pin = unsafe { input(pin, pin_len) }?;
        module.init_pin(session, pin)
    })
}

/// `C_SetPIN`.
#[no_mangle]
unsafe extern "C" fn C_SetPIN(
    session: CK_SESSION_HANDLE,
    old: *mut CK_UTF8CHAR,
    old_len: CK_ULONG,
    new: *mut CK_UTF8CHAR,
    new_len: CK_ULONG,
) -> CK_RV {
    dispatch("C_SetPIN", |module| {
        if old.is_null() || new.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        // SAFETY: each PIN holds its length in bytes.
        let (old, new) = unsafe { (input(old, old_len)?, input(new, new_len)?) };
        module.set_pin(session, old, new)
    })
}

// ----- sessions -----------------------------------------------------------------

/// `C_OpenSession` (notification callbacks are never called).
#[no_mangle]
unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _application: *mut c_void,
    _notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    dispatch("C_OpenSession", |module| {
        if session.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        let handle = module.open_session(slot, flags)?;
        // SAFETY: `session` points to a CK_SESSION_HANDLE.
        unsafe { write(session, handle) }
    })
}

/// `C_CloseSession`.
#[no_mangle]
unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    dispatch("C_CloseSession", |module| module.close_session(session))
}

/// `C_CloseAllSessions`.
#[no_mangle]
unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    dispatch("C_CloseAllSessions", |module| {
        module.close_all_sessions(slot)
    })
}

/// `C_GetSessionInfo`.
#[no_mangle]
unsafe extern "C" fn C_GetSessionInfo(
    session: CK_SESSION_HANDLE,
    info: *mut CK_SESSION_INFO,
) -> CK_RV {
    dispatch("C_GetSessionInfo", |module| {
        if info.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        let session_info = module.session_info(session)?;
        let value = CK_SESSION_INFO {
            slotID: session_info.slot,
            state: session_info.state,
            flags: session_info.flags,
            ulDeviceError: 0,
        };
        // SAFETY: `info` points to a CK_SESSION_INFO.
        unsafe { write(info, value) }
    })
}

/// `C_Login`.
#[no_mangle]
unsafe extern "C" fn C_Login(
    session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
) -> CK_RV {
    dispatch("C_Login", |module| {
        if pin.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        // SAFETY: `pin` holds `pin_len` bytes.
        let pin = unsafe { input(pin, pin_len) }?;
        module.login(session, user_type, pin)
    })
}

/// `C_Logout`.
#[no_mangle]
unsafe extern "C" fn C_Logout(session: CK_SESSION_HANDLE) -> CK_RV {
    dispatch("C_Logout", |module| module.logout(session))
}

// ----- objects ------------------------------------------------------------------

/// `C_CreateObject`.
#[no_mangle]
unsafe extern "C" fn C_CreateObject(
    session: CK_SESSION_HANDLE,
    attributes: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    dispatch("C_CreateObject", |module| {
        if object.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        // SAFETY: `attributes` holds `count` attributes.
        let template = unsafe { template(attributes, count) }?;
        let handle = module.create_object(session, &template)?;
        // SAFETY: `object` points to a CK_OBJECT_HANDLE.
        unsafe { write(object, handle) }
    })
}

/// `C_DestroyObject`.
#[no_mangle]
unsafe extern "C" fn C_DestroyObject(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> CK_RV {
    dispatch("C_DestroyObject", |module| {
        module.destroy_object(session, object)
    })
}

/// `C_GetAttributeValue`: every attribute is processed; the return code
/// reports the most serious problem (sensitive, then unknown, then a short
/// buffer), with `CK_UNAVAILABLE_INFORMATION` in each affected length.
#[no_mangle]
unsafe extern "C" fn C_GetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    attributes: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    dispatch("C_GetAttributeValue", |module| {
        if count == 0 {
            return Ok(());
        }
        if attributes.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        // SAFETY: `attributes` holds `count` attributes the application
        // lets us update during the call.
        let attributes = unsafe { std::slice::from_raw_parts_mut(attributes, to_usize(count)?) };
        let types: Vec<CK_ATTRIBUTE_TYPE> =
            attributes.iter().map(|attribute| attribute.type_).collect();
        let values = module.attribute_values(session, object, &types)?;
        let mut worst: Option<(u8, Ckr)> = None;
        let mut note = |rank: u8, code: Ckr| {
            if worst.is_none_or(|(current, _)| rank > current) {
                worst = Some((rank, code));
            }
        };
        for (attribute, value) in attributes.iter_mut().zip(values) {
            match value {
                AttributeValue::Sensitive => {
                    attribute.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    note(3, Ckr::ATTRIBUTE_SENSITIVE);
                }
                AttributeValue::Invalid => {
                    attribute.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    note(2, Ckr::ATTRIBUTE_TYPE_INVALID);
                }
                AttributeValue::Value(bytes) => {
                    let len = to_ulong(bytes.len())?;
                    if attribute.pValue.is_null() {
                        attribute.ulValueLen = len;
                    } else if attribute.ulValueLen >= len {
                        // SAFETY: `pValue` holds `ulValueLen >= len` bytes.
                        let target = unsafe { output(attribute.pValue.cast::<u8>(), len) }?;
                        target.copy_from_slice(&bytes);
                        attribute.ulValueLen = len;
                    } else {
                        attribute.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                        note(1, Ckr::BUFFER_TOO_SMALL);
                    }
                }
            }
        }
        worst.map_or(Ok(()), |(_, code)| Err(code))
    })
}

/// `C_SetAttributeValue`.
#[no_mangle]
unsafe extern "C" fn C_SetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    attributes: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    dispatch("C_SetAttributeValue", |module| {
        // SAFETY: `attributes` holds `count` attributes.
        let template = unsafe { template(attributes, count) }?;
        module.set_attribute_values(session, object, &template)
    })
}

/// `C_FindObjectsInit`.
#[no_mangle]
unsafe extern "C" fn C_FindObjectsInit(
    session: CK_SESSION_HANDLE,
    attributes: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    dispatch("C_FindObjectsInit", |module| {
        // SAFETY: `attributes` holds `count` attributes.
        let template = unsafe { template(attributes, count) }?;
        module.find_init(session, &template)
    })
}

/// `C_FindObjects`.
#[no_mangle]
unsafe extern "C" fn C_FindObjects(
    session: CK_SESSION_HANDLE,
    objects: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    found: *mut CK_ULONG,
) -> CK_RV {
    dispatch("C_FindObjects", |module| {
        if found.is_null() || (objects.is_null() && max > 0) {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        let handles = module.find(session, to_usize(max)?)?;
        if !handles.is_empty() {
            // SAFETY: `objects` holds `max >= handles.len()` handles.
            let target = unsafe { std::slice::from_raw_parts_mut(objects, handles.len()) };
            target.copy_from_slice(&handles);
        }
        // SAFETY: `found` points to a CK_ULONG.
        unsafe { write(found, to_ulong(handles.len())?) }
    })
}

/// `C_FindObjectsFinal`.
#[no_mangle]
unsafe extern "C" fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    dispatch("C_FindObjectsFinal", |module| module.find_final(session))
}

// ----- keys ---------------------------------------------------------------------

/// `C_GenerateKeyPair`.
#[no_mangle]
unsafe extern "C" fn C_GenerateKeyPair(
    session: CK_SESSION_HANDLE,
    kind: *mut CK_MECHANISM,
    public_attributes: *mut CK_ATTRIBUTE,
    public_count: CK_ULONG,
    private_attributes: *mut CK_ATTRIBUTE,
    private_count: CK_ULONG,
    public_key: *mut CK_OBJECT_HANDLE,
    private_key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    dispatch("C_GenerateKeyPair", |module| {
        if public_key.is_null() || private_key.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        // SAFETY: each pointer holds what its count or type says.
        let (kind, param, public_template, private_template) = unsafe {
            let (kind, param) = mechanism(kind)?;
            (
                kind,
                param,
                template(public_attributes, public_count)?,
                template(private_attributes, private_count)?,
            )
        };
        let (public, private) =
            module.generate_key_pair(session, kind, &param, &public_template, &private_template)?;
        // SAFETY: both outputs point to a CK_OBJECT_HANDLE.
        unsafe {
            write(public_key, public)?;
            write(private_key, private)
        }
    })
}

// ----- sign and verify ------------------------------------------------------------

/// `C_SignInit`.
#[no_mangle]
unsafe extern "C" fn C_SignInit(
    session: CK_SESSION_HANDLE,
    kind: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    dispatch("C_SignInit", |module| {
        // SAFETY: `kind` points to a CK_MECHANISM.
        let (kind, param) = unsafe { mechanism(kind) }?;
        module.sign_init(session, kind, &param, key)
    })
}

/// `C_Sign`.
#[no_mangle]
unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    dispatch_operation("C_Sign", session, |module| {
        // SAFETY: `data` holds `data_len` bytes.
        let data = unsafe { input(data, data_len) }?;
        let len = module.sign_len(session)?;
        // SAFETY: the output pair follows the PKCS#11 output convention.
        unsafe { output_bytes(signature, signature_len, len, || module.sign(session, data)) }
    })
}

/// `C_SignUpdate`.
#[no_mangle]
unsafe extern "C" fn C_SignUpdate(
    session: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    part_len: CK_ULONG,
) -> CK_RV {
    dispatch_operation("C_SignUpdate", session, |module| {
        // SAFETY: `part` holds `part_len` bytes.
        let part = unsafe { input(part, part_len) }?;
        module.sign_update(session, part)
    })
}

/// `C_SignFinal`.
#[no_mangle]
unsafe extern "C" fn C_SignFinal(
    session: CK_SESSION_HANDLE,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    dispatch_operation("C_SignFinal", session, |module| {
        let len = module.sign_len(session)?;
        // SAFETY: the output pair follows the PKCS#11 output convention.
        unsafe { output_bytes(signature, signature_len, len, || module.sign_final(session)) }
    })
}

/// `C_VerifyInit`.
#[no_mangle]
unsafe extern "C" fn C_VerifyInit(
    session: CK_SESSION_HANDLE,
    kind: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    dispatch("C_VerifyInit", |module| {
        // SAFETY: `kind` points to a CK_MECHANISM.
        let (kind, param) = unsafe { mechanism(kind) }?;
        module.verify_init(session, kind, &param, key)
    })
}

/// `C_Verify`.
#[no_mangle]
unsafe extern "C" fn C_Verify(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: CK_ULONG,
) -> CK_RV {
    dispatch_operation("C_Verify", session, |module| {
        // SAFETY: each buffer holds its length in bytes.
        let (data, signature) =
            unsafe { (input(data, data_len)?, input(signature, signature_len)?) };
        module.verify(session, data, signature)
    })
}

/// `C_VerifyUpdate`.
#[no_mangle]
unsafe extern "C" fn C_VerifyUpdate(
    session: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    part_len: CK_ULONG,
) -> CK_RV {
    dispatch_operation("C_VerifyUpdate", session, |module| {
        // SAFETY: `part` holds `part_len` bytes.
        let part = unsafe { input(part, part_len) }?;
        module.verify_update(session, part)
    })
}

/// `C_VerifyFinal`.
#[no_mangle]
unsafe extern "C" fn C_VerifyFinal(
    session: CK_SESSION_HANDLE,
    signature: *mut CK_BYTE,
    signature_len: CK_ULONG,
) -> CK_RV {
    dispatch_operation("C_VerifyFinal", session, |module| {
        // SAFETY: `signature` holds `signature_len` bytes.
        let signature = unsafe { input(signature, signature_len) }?;
        module.verify_final(session, signature)
    })
}

// ----- digest and random ------------------------------------------------------------

/// `C_DigestInit`.
#[no_mangle]
unsafe extern "C" fn C_DigestInit(session: CK_SESSION_HANDLE, kind: *mut CK_MECHANISM) -> CK_RV {
    dispatch("C_DigestInit", |module| {
        // SAFETY: `kind` points to a CK_MECHANISM.
        let (kind, param) = unsafe { mechanism(kind) }?;
        module.digest_init(session, kind, &param)
    })
}

/// `C_Digest`.
#[no_mangle]
unsafe extern "C" fn C_Digest(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    digest: *mut CK_BYTE,
    digest_len: *mut CK_ULONG,
) -> CK_RV {
    dispatch_operation("C_Digest", session, |module| {
        // SAFETY: `data` holds `data_len` bytes.
        let data = unsafe { input(data, data_len) }?;
        let len = module.digest_len(session)?;
        // SAFETY: the output pair follows the PKCS#11 output convention.
        unsafe { output_bytes(digest, digest_len, len, || module.digest(session, data)) }
    })
}

/// `C_DigestUpdate`.
#[no_mangle]
unsafe extern "C" fn C_DigestUpdate(
    session: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    part_len: CK_ULONG,
) -> CK_RV {
    dispatch_operation("C_DigestUpdate", session, |module| {
        // SAFETY: `part` holds `part_len` bytes.
        let part = unsafe { input(part, part_len) }?;
        module.digest_update(session, part)
    })
}

/// `C_DigestFinal`.
#[no_mangle]
unsafe extern "C" fn C_DigestFinal(
    session: CK_SESSION_HANDLE,
    digest: *mut CK_BYTE,
    digest_len: *mut CK_ULONG,
) -> CK_RV {
    dispatch_operation("C_DigestFinal", session, |module| {
        let len = module.digest_len(session)?;
        // SAFETY: the output pair follows the PKCS#11 output convention.
        unsafe { output_bytes(digest, digest_len, len, || module.digest_final(session)) }
    })
}

/// `C_SeedRandom`: mixes the seed into OpenSSL's generator, crediting it
/// with no entropy (the application's seed can only add, never weaken).
#[no_mangle]
unsafe extern "C" fn C_SeedRandom(
    session: CK_SESSION_HANDLE,
    seed: *mut CK_BYTE,
    seed_len: CK_ULONG,
) -> CK_RV {
    dispatch("C_SeedRandom", |module| {
        module.check_session(session)?;
        // SAFETY: `seed` holds `seed_len` bytes.
        let seed = unsafe { input(seed, seed_len) }?;
        let len = std::ffi::c_int::try_from(seed.len()).map_err(|_| Ckr::DATA_LEN_RANGE)?;
        openssl::init();
        // SAFETY: RAND_add reads exactly `len` bytes from a valid buffer.
        unsafe { openssl_sys::RAND_add(seed.as_ptr().cast::<c_void>(), len, 0.0) };
        Ok(())
    })
}

/// `C_GenerateRandom`.
#[no_mangle]
unsafe extern "C" fn C_GenerateRandom(
    session: CK_SESSION_HANDLE,
    buffer: *mut CK_BYTE,
    len: CK_ULONG,
) -> CK_RV {
    dispatch("C_GenerateRandom", |module| {
        // SAFETY: `buffer` holds `len` writable bytes.
        let buffer = unsafe { output(buffer, len) }?;
        module.generate_random(session, buffer)
    })
}

// ----- unsupported ------------------------------------------------------------------

/// Functions outside the supported set: they still pass through the fault
/// layer, then return `CKR_FUNCTION_NOT_SUPPORTED` without touching their
/// arguments.
macro_rules! not_supported {
    ($($name:ident($($argument:ty),*);)*) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported.")]
        #[no_mangle]
        extern "C" fn $name($(_: $argument),*) -> CK_RV {
            dispatch(stringify!($name), |_| Err(Ckr::FUNCTION_NOT_SUPPORTED))
        }
    )*};
}

not_supported! {
    C_GetOperationState(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    C_SetOperationState(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE);
    C_CopyObject(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    C_GetObjectSize(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, *mut CK_ULONG);
    C_EncryptInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_Encrypt(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_EncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_EncryptFinal(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_Decrypt(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptFinal(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    C_DigestKey(CK_SESSION_HANDLE, CK_OBJECT_HANDLE);
    C_SignRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_SignRecover(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_VerifyRecoverInit(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE);
    C_VerifyRecover(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DigestEncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptDigestUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_SignEncryptUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_DecryptVerifyUpdate(CK_SESSION_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_BYTE, *mut CK_ULONG);
    C_GenerateKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    C_WrapKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE, *mut CK_BYTE, *mut CK_ULONG);
    C_UnwrapKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_BYTE, CK_ULONG, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    C_DeriveKey(CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE, *mut CK_ATTRIBUTE, CK_ULONG, *mut CK_OBJECT_HANDLE);
    C_WaitForSlotEvent(CK_FLAGS, *mut CK_SLOT_ID, *mut c_void);
}

/// Legacy parallel-function management (PKCS#11 v2.40 §5.16): every
/// function here runs synchronously, so the standard answer is
/// `CKR_FUNCTION_NOT_PARALLEL`.
macro_rules! not_parallel {
    ($($name:ident;)*) => {$(
        #[doc = concat!("`", stringify!($name), "`: `CKR_FUNCTION_NOT_PARALLEL`.")]
        #[no_mangle]
        extern "C" fn $name(_: CK_SESSION_HANDLE) -> CK_RV {
            dispatch(stringify!($name), |_| Err(Ckr::FUNCTION_NOT_PARALLEL))
        }
    )*};
}

not_parallel! {
    C_GetFunctionStatus;
    C_CancelFunction;
}

/// The function table `C_GetFunctionList` hands out.
static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};
