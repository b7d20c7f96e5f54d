//! Errors of the `hsm` module, and the one place that sorts PKCS#11 return
//! codes into fault kinds.
//!
//! Callers outside `hsm` see [`HsmError`] and [`FaultKind`] only. The
//! underlying `cryptoki` error is kept inside the opaque [`Pkcs11Failure`],
//! reachable through [`std::error::Error::source`] for logs, so no cryptoki
//! type appears in a public signature.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use certmint::wire::KeyType;
use cryptoki::error::{Error as CryptokiError, RvError};

/// Everything that can go wrong talking to the HSM.
///
/// Variants carry the context an operator needs (the module path, the token
/// or key label, the PKCS#11 function). None of them ever carries a PIN.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The PKCS#11 module could not be loaded or initialized.
    #[error("cannot load PKCS#11 module {}", path.display())]
    ModuleLoad {
        /// The configured module path.
        path: PathBuf,
        /// What the loader or `C_Initialize` said.
        #[source]
        source: Pkcs11Failure,
    },

    /// No token with this label is present in any slot.
    #[error("no PKCS#11 token labelled {label:?}")]
    TokenNotFound {
        /// The configured token label.
        label: String,
    },

    /// More than one token carries this label, so the configuration cannot
    /// pick one.
    #[error("more than one PKCS#11 token is labelled {label:?}")]
    TokenAmbiguous {
        /// The configured token label.
        label: String,
    },

    /// `C_Login` refused the PIN (incorrect, locked, expired or not set).
    #[error("login to PKCS#11 token {token_label:?} failed")]
    Login {
        /// The token the login was for.
        token_label: String,
        /// The return code, for the log.
        #[source]
        source: Pkcs11Failure,
    },

    /// `C_Login` refused the PIN earlier in this process, so certmint sends
    /// no further `C_Login` with it: tokens lock the user PIN after a few
    /// wrong tries, and a locked CA token needs its security officer. The
    /// cure is the right PIN and a restart.
    #[error("login to PKCS#11 token {token_label:?} was refused earlier; not retrying with the same PIN, which could lock the token (fix the PIN and restart)")]
    LoginSuspended {
        /// The token the login was for.
        token_label: String,
    },

    /// The module was finalized because the process is shutting down.
    #[error("the PKCS#11 module has been finalized (shutting down)")]
    Finalized,

    /// No private key with this label exists on the token.
    #[error("no private key labelled {label:?} on the token")]
    KeyNotFound {
        /// The key label that was looked up.
        label: String,
    },

    /// The private key exists but its public half is missing, so the SPKI
    /// cannot be built.
    #[error("private key {label:?} has no matching public key object on the token")]
    PublicKeyNotFound {
        /// The key label that was looked up.
        label: String,
    },

    /// An object with this label already exists; key generation refuses to
    /// add a second one (which makes `init` safe to run twice). Also returned
    /// by [`super::init_token`] when a token with the label exists.
    #[error("an object labelled {label:?} already exists")]
    AlreadyExists {
        /// The label that is taken.
        label: String,
    },

    /// More than one private key carries this label.
    #[error("more than one private key is labelled {label:?}")]
    Ambiguous {
        /// The ambiguous label.
        label: String,
    },

    /// The token (or this module) cannot generate or use this key type.
    #[error("the token does not support key type {key_type}")]
    UnsupportedKeyType {
        /// The key type asked for.
        key_type: KeyType,
    },

    /// The key on the token is not one certmint can use, or its public
    /// material is malformed (e.g. a curve certmint does not know).
    #[error("key {label:?} on the token is unusable: {reason}")]
    UnusableKey {
        /// The key label.
        label: String,
        /// Why, in a few words.
        reason: &'static str,
    },

    /// The token returned a signature of the wrong size for the key.
    #[error("the token returned a {length}-byte signature for key {label:?}, which is malformed")]
    MalformedSignature {
        /// The key label.
        label: String,
        /// The length the token returned.
        length: usize,
    },

    /// [`super::init_token`] found no slot with an uninitialized token.
    #[error("no slot holds an uninitialized token")]
    NoUninitializedToken,

    /// A PKCS#11 call failed.
    #[error("PKCS#11 call {function} failed ({kind})")]
    Device {
        /// How the caller should react.
        kind: FaultKind,
        /// The PKCS#11 function or operation that failed, e.g. `C_Sign`.
        function: &'static str,
        /// The return code, for the log.
        #[source]
        source: Pkcs11Failure,
    },

    /// The token was there at start but is not present now (removed, or
    /// its device restarted): a device fault, not a configuration error.
    #[error("PKCS#11 token {label:?} is not present (device removed or restarting)")]
    TokenAbsent {
        /// The configured token label.
        label: String,
    },

    /// The token is unreachable and the pool is waiting before its next
    /// attempt to reopen a session (capped exponential backoff), so an
    /// outage costs each request one cheap check, not a PKCS#11 round trip.
    #[error("the HSM is unavailable; next reconnection attempt in {retry_in:?}")]
    Reconnecting {
        /// Time left until the next attempt.
        retry_in: Duration,
    },

    /// Every pooled session stayed busy for too long.
    #[error("no PKCS#11 session became free within {waited:?}")]
    SessionPoolTimeout {
        /// How long the caller waited.
        waited: Duration,
    },

    /// DER encoding or decoding of key material or a signature failed.
    #[error("DER encoding failed while building {context}")]
    Encoding {
        /// What was being built or parsed.
        context: &'static str,
        /// The `der` error.
        #[source]
        source: der::Error,
    },
}

impl HsmError {
    /// The fault kind of a device-level failure, for the HTTP mapping
    /// (`Transient` → 503 with `Retry-After`) and for `/readyz`
    /// (`DeviceGone` → not ready). `None` for errors that are not about the
    /// device's health (configuration, missing keys, encoding).
    pub fn fault_kind(&self) -> Option<FaultKind> {
        match self {
            HsmError::Device { kind, .. } => Some(*kind),
            HsmError::SessionPoolTimeout { .. } => Some(FaultKind::Transient),
            HsmError::TokenAbsent { .. } | HsmError::Reconnecting { .. } => {
                Some(FaultKind::DeviceGone)
            }
            _ => None,
        }
    }

    /// Whether the same request may succeed if retried later.
    ///
    /// True for `Transient` and `DeviceGone` faults: the module has already
    /// retried once on a fresh session internally, so the caller should back
    /// off (503 + `Retry-After`) rather than spin.
    ///
    /// Also true for a refused or suspended login and for a finalized
    /// module: the device is unusable until an operator (or a restart)
    /// acts, which is a 503 for the caller, not a server bug.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            HsmError::Login { .. } | HsmError::LoginSuspended { .. } | HsmError::Finalized
        ) || matches!(
            self.fault_kind(),
            Some(FaultKind::Transient | FaultKind::DeviceGone)
        )
    }

    /// True when the failure means the session (or the whole module) must
    /// be reopened before the next attempt.
    pub(super) fn is_session_fault(&self) -> bool {
        self.fault_kind() == Some(FaultKind::DeviceGone)
    }

    /// The PKCS#11 return code behind a device failure, if there is one.
    pub(super) fn return_value(&self) -> Option<RvError> {
        match self {
            HsmError::Device { source, .. }
            | HsmError::Login { source, .. }
            | HsmError::ModuleLoad { source, .. } => source.return_value(),
            _ => None,
        }
    }
}

/// How a caller should react to a device failure.
///
/// Sorted by [`classify`], the only place that looks at PKCS#11 return codes.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// A momentary failure (device busy, out of device memory, session
    /// limit): retry later; the API answers 503 with `Retry-After`.
    Transient,
    /// The session, token or module is gone: reopen the session (and if
    /// needed the module) with backoff; `/readyz` reports not ready.
    DeviceGone,
    /// The token does not implement the mechanism or function asked for.
    Unsupported,
    /// Anything else: a certmint bug or an unexpected token state (500).
    Bug,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Transient => "transient",
            FaultKind::DeviceGone => "device gone",
            FaultKind::Unsupported => "unsupported",
            FaultKind::Bug => "unexpected",
        })
    }
}

/// A failure reported by the PKCS#11 layer, kept opaque so that the
/// `cryptoki` crate stays an implementation detail of `hsm`.
///
/// Its `Display` names the PKCS#11 function and return code, which is what
/// the log needs.
pub struct Pkcs11Failure {
    error: CryptokiError,
}

impl Pkcs11Failure {
    pub(super) fn new(error: CryptokiError) -> Self {
        Pkcs11Failure { error }
    }

    /// The PKCS#11 return code, when the failure came from a `C_*` call.
    pub(super) fn return_value(&self) -> Option<RvError> {
        match &self.error {
            CryptokiError::Pkcs11(rv, _) => Some(*rv),
            _ => None,
        }
    }
}

impl fmt::Debug for Pkcs11Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl fmt::Display for Pkcs11Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            // cryptoki's own Display prints the spec's long description; the
            // short code name is what operators grep for.
            CryptokiError::Pkcs11(rv, function) => write!(f, "{function:?} returned {rv:?}"),
            other => fmt::Display::fmt(other, f),
        }
    }
}

impl std::error::Error for Pkcs11Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

/// Sorts a PKCS#11 return code into a [`FaultKind`].
///
/// This is the only function in certmint that interprets return codes.
/// `CKR_GENERAL_ERROR` counts as `DeviceGone`: the specification calls it
/// unrecoverable and warns the token may be in an inconsistent state, so
/// the session is reopened rather than reused. `CKR_USER_NOT_LOGGED_IN`
/// also counts as `DeviceGone`: the login state was lost (e.g. every
/// session of the application was closed), and the cure is the same
/// reopen-and-log-in path.
pub(super) fn classify(return_value: RvError) -> FaultKind {
    match return_value {
        RvError::DeviceError
        | RvError::DeviceMemory
        | RvError::HostMemory
        | RvError::FunctionFailed
        | RvError::FunctionCanceled
        | RvError::Cancel
        | RvError::SessionCount
        | RvError::CantLock => FaultKind::Transient,

        RvError::DeviceRemoved
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::SlotIdInvalid
        | RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::UserNotLoggedIn
        | RvError::CryptokiNotInitialized
        | RvError::GeneralError => FaultKind::DeviceGone,

        RvError::MechanismInvalid
        | RvError::MechanismParamInvalid
        | RvError::FunctionNotSupported
        | RvError::CurveNotSupported
        | RvError::KeySizeRange
        | RvError::DomainParamsInvalid
        | RvError::AttributeTypeInvalid => FaultKind::Unsupported,

        _ => FaultKind::Bug,
    }
}

/// Maps a `cryptoki` error from `function` into an [`HsmError::Device`].
///
/// Errors that did not come from a `C_*` return code (a missing function
/// pointer, a conversion failure inside cryptoki) are `Unsupported` when the
/// module lacks the function and `Bug` otherwise.
pub(super) fn device_error(function: &'static str, error: CryptokiError) -> HsmError {
    let kind = match &error {
        CryptokiError::Pkcs11(return_value, _) => classify(*return_value),
        CryptokiError::NullFunctionPointer | CryptokiError::NotSupported => FaultKind::Unsupported,
        _ => FaultKind::Bug,
    };
    HsmError::Device {
        kind,
        function,
        source: Pkcs11Failure::new(error),
    }
}

/// Maps a failed `C_Login` for `token_label`: device faults stay
/// [`HsmError::Device`]; everything else (wrong, locked, expired or unset
/// PIN) is a refusal, [`HsmError::Login`].
pub(super) fn login_error(token_label: &str, error: CryptokiError) -> HsmError {
    match device_error("C_Login", error) {
        HsmError::Device {
            kind: FaultKind::Bug,
            source,
            ..
        } => HsmError::Login {
            token_label: token_label.to_owned(),
            source,
        },
        other => other,
    }
}

/// `?`-friendly conversion of cryptoki results, naming the PKCS#11 function.
pub(super) trait DuringExt<T> {
    /// Maps the error with [`device_error`].
    fn during(self, function: &'static str) -> Result<T, HsmError>;
}

impl<T> DuringExt<T> for Result<T, CryptokiError> {
    fn during(self, function: &'static str) -> Result<T, HsmError> {
        self.map_err(|error| device_error(function, error))
    }
}

/// Shorthand for the `Encoding` variant.
pub(super) fn encoding(context: &'static str) -> impl FnOnce(der::Error) -> HsmError {
    move |source| HsmError::Encoding { context, source }
}
