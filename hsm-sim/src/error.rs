//! [`Ckr`], the error of every internal function: a PKCS#11 return code.
//!
//! Internal functions return `Result<T, Ckr>`; the C ABI layer turns the
//! result into a `CK_RV` in one place. A `Ckr` never carries a message, so
//! no PIN or key material can leak through an error.

use std::fmt;

use cryptoki_sys::*;

/// A PKCS#11 return code other than `CKR_OK`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ckr(pub CK_RV);

/// Shorthand for results whose error is a return code.
pub type Result<T> = std::result::Result<T, Ckr>;

impl Ckr {
    pub const ARGUMENTS_BAD: Ckr = Ckr(CKR_ARGUMENTS_BAD);
    pub const ATTRIBUTE_READ_ONLY: Ckr = Ckr(CKR_ATTRIBUTE_READ_ONLY);
    pub const ATTRIBUTE_SENSITIVE: Ckr = Ckr(CKR_ATTRIBUTE_SENSITIVE);
    pub const ATTRIBUTE_TYPE_INVALID: Ckr = Ckr(CKR_ATTRIBUTE_TYPE_INVALID);
    pub const ATTRIBUTE_VALUE_INVALID: Ckr = Ckr(CKR_ATTRIBUTE_VALUE_INVALID);
    pub const ACTION_PROHIBITED: Ckr = Ckr(CKR_ACTION_PROHIBITED);
    pub const BUFFER_TOO_SMALL: Ckr = Ckr(CKR_BUFFER_TOO_SMALL);
    pub const CRYPTOKI_ALREADY_INITIALIZED: Ckr = Ckr(CKR_CRYPTOKI_ALREADY_INITIALIZED);
    pub const CRYPTOKI_NOT_INITIALIZED: Ckr = Ckr(CKR_CRYPTOKI_NOT_INITIALIZED);
    pub const CURVE_NOT_SUPPORTED: Ckr = Ckr(CKR_CURVE_NOT_SUPPORTED);
    pub const DATA_LEN_RANGE: Ckr = Ckr(CKR_DATA_LEN_RANGE);
    pub const DEVICE_ERROR: Ckr = Ckr(CKR_DEVICE_ERROR);
    pub const DEVICE_REMOVED: Ckr = Ckr(CKR_DEVICE_REMOVED);
    pub const DOMAIN_PARAMS_INVALID: Ckr = Ckr(CKR_DOMAIN_PARAMS_INVALID);
    pub const FUNCTION_FAILED: Ckr = Ckr(CKR_FUNCTION_FAILED);
    pub const FUNCTION_NOT_SUPPORTED: Ckr = Ckr(CKR_FUNCTION_NOT_SUPPORTED);
    pub const GENERAL_ERROR: Ckr = Ckr(CKR_GENERAL_ERROR);
    pub const KEY_FUNCTION_NOT_PERMITTED: Ckr = Ckr(CKR_KEY_FUNCTION_NOT_PERMITTED);
    pub const KEY_HANDLE_INVALID: Ckr = Ckr(CKR_KEY_HANDLE_INVALID);
    pub const KEY_SIZE_RANGE: Ckr = Ckr(CKR_KEY_SIZE_RANGE);
    pub const KEY_TYPE_INCONSISTENT: Ckr = Ckr(CKR_KEY_TYPE_INCONSISTENT);
    pub const MECHANISM_INVALID: Ckr = Ckr(CKR_MECHANISM_INVALID);
    pub const MECHANISM_PARAM_INVALID: Ckr = Ckr(CKR_MECHANISM_PARAM_INVALID);
    pub const OBJECT_HANDLE_INVALID: Ckr = Ckr(CKR_OBJECT_HANDLE_INVALID);
    pub const OPERATION_ACTIVE: Ckr = Ckr(CKR_OPERATION_ACTIVE);
    pub const OPERATION_NOT_INITIALIZED: Ckr = Ckr(CKR_OPERATION_NOT_INITIALIZED);
    pub const PIN_INCORRECT: Ckr = Ckr(CKR_PIN_INCORRECT);
    pub const PIN_LEN_RANGE: Ckr = Ckr(CKR_PIN_LEN_RANGE);
    pub const SESSION_COUNT: Ckr = Ckr(CKR_SESSION_COUNT);
    pub const SESSION_EXISTS: Ckr = Ckr(CKR_SESSION_EXISTS);
    pub const SESSION_HANDLE_INVALID: Ckr = Ckr(CKR_SESSION_HANDLE_INVALID);
    pub const SESSION_PARALLEL_NOT_SUPPORTED: Ckr = Ckr(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    pub const SESSION_READ_ONLY: Ckr = Ckr(CKR_SESSION_READ_ONLY);
    pub const SESSION_READ_ONLY_EXISTS: Ckr = Ckr(CKR_SESSION_READ_ONLY_EXISTS);
    pub const SESSION_READ_WRITE_SO_EXISTS: Ckr = Ckr(CKR_SESSION_READ_WRITE_SO_EXISTS);
    pub const SIGNATURE_INVALID: Ckr = Ckr(CKR_SIGNATURE_INVALID);
    pub const SIGNATURE_LEN_RANGE: Ckr = Ckr(CKR_SIGNATURE_LEN_RANGE);
    pub const SLOT_ID_INVALID: Ckr = Ckr(CKR_SLOT_ID_INVALID);
    pub const TEMPLATE_INCOMPLETE: Ckr = Ckr(CKR_TEMPLATE_INCOMPLETE);
    pub const TEMPLATE_INCONSISTENT: Ckr = Ckr(CKR_TEMPLATE_INCONSISTENT);
    pub const TOKEN_NOT_PRESENT: Ckr = Ckr(CKR_TOKEN_NOT_PRESENT);
    pub const TOKEN_NOT_RECOGNIZED: Ckr = Ckr(CKR_TOKEN_NOT_RECOGNIZED);
    pub const USER_ALREADY_LOGGED_IN: Ckr = Ckr(CKR_USER_ALREADY_LOGGED_IN);
    pub const USER_ANOTHER_ALREADY_LOGGED_IN: Ckr = Ckr(CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
    pub const USER_NOT_LOGGED_IN: Ckr = Ckr(CKR_USER_NOT_LOGGED_IN);
    pub const USER_PIN_NOT_INITIALIZED: Ckr = Ckr(CKR_USER_PIN_NOT_INITIALIZED);
    pub const USER_TYPE_INVALID: Ckr = Ckr(CKR_USER_TYPE_INVALID);
    pub const RANDOM_SEED_NOT_SUPPORTED: Ckr = Ckr(CKR_RANDOM_SEED_NOT_SUPPORTED);
    pub const FUNCTION_NOT_PARALLEL: Ckr = Ckr(CKR_FUNCTION_NOT_PARALLEL);
    pub const CANT_LOCK: Ckr = Ckr(CKR_CANT_LOCK);
}

impl fmt::Debug for Ckr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match name_of(self.0) {
            Some(name) => f.write_str(name),
            None => write!(f, "CKR_0x{:x}", self.0),
        }
    }
}

impl fmt::Display for Ckr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Ckr {}

/// Return codes by name, for the fault configuration (`fail_code`).
const NAMES: &[(&str, CK_RV)] = &[
    ("CKR_OK", CKR_OK),
    ("CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD),
    ("CKR_ATTRIBUTE_SENSITIVE", CKR_ATTRIBUTE_SENSITIVE),
    ("CKR_ATTRIBUTE_TYPE_INVALID", CKR_ATTRIBUTE_TYPE_INVALID),
    ("CKR_BUFFER_TOO_SMALL", CKR_BUFFER_TOO_SMALL),
    ("CKR_CANT_LOCK", CKR_CANT_LOCK),
    ("CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED),
    ("CKR_DEVICE_ERROR", CKR_DEVICE_ERROR),
    ("CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY),
    ("CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED),
    ("CKR_FUNCTION_CANCELED", CKR_FUNCTION_CANCELED),
    ("CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED),
    ("CKR_FUNCTION_NOT_SUPPORTED", CKR_FUNCTION_NOT_SUPPORTED),
    ("CKR_GENERAL_ERROR", CKR_GENERAL_ERROR),
    ("CKR_HOST_MEMORY", CKR_HOST_MEMORY),
    ("CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID),
    ("CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID),
    ("CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID),
    ("CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE),
    (
        "CKR_OPERATION_NOT_INITIALIZED",
        CKR_OPERATION_NOT_INITIALIZED,
    ),
    ("CKR_PIN_INCORRECT", CKR_PIN_INCORRECT),
    ("CKR_PIN_LOCKED", CKR_PIN_LOCKED),
    ("CKR_SESSION_CLOSED", CKR_SESSION_CLOSED),
    ("CKR_SESSION_COUNT", CKR_SESSION_COUNT),
    ("CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID),
    ("CKR_SLOT_ID_INVALID", CKR_SLOT_ID_INVALID),
    ("CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT),
    ("CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED),
    ("CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN),
];

/// The `CKR_*` name of a return code, if it is one the fault table knows.
pub fn name_of(code: CK_RV) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|(_, value)| *value == code)
        .map(|(name, _)| *name)
}

/// Parses a return code given by name (`CKR_DEVICE_ERROR`, with or without
/// the `CKR_` prefix, any case) or as a number (`0x30`, `48`).
pub fn parse_code(text: &str) -> Option<CK_RV> {
    let trimmed = text.trim();
    if let Some(hex) = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
    {
        return CK_RV::from_str_radix(hex, 16).ok();
    }
    if let Ok(number) = trimmed.parse::<CK_RV>() {
        return Some(number);
    }
    let upper = trimmed.to_ascii_uppercase();
    let full = if upper.starts_with("CKR_") {
        upper
    } else {
        format!("CKR_{upper}")
    };
    NAMES
        .iter()
        .find(|(name, _)| *name == full)
        .map(|(_, value)| *value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_parse_code_by_name_number_and_hex() {
        assert_eq!(parse_code("CKR_DEVICE_ERROR"), Some(CKR_DEVICE_ERROR));
        assert_eq!(parse_code("device_removed"), Some(CKR_DEVICE_REMOVED));
        assert_eq!(parse_code("0x30"), Some(0x30));
        assert_eq!(parse_code("48"), Some(48));
        assert_eq!(parse_code("CKR_NO_SUCH_THING"), None);
    }
}
