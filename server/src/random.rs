//! Randomness for serials and identifiers, from the operating system.
//!
//! Invariant: failure of the OS generator is an error, never papered over
//! with a weaker source.

use ring::rand::{SecureRandom as _, SystemRandom};

/// The operating system's random number generator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system random number generator failed")]
pub struct EntropyError;

/// Fills `buffer` with random bytes.
pub fn fill(buffer: &mut [u8]) -> Result<(), EntropyError> {
    SystemRandom::new().fill(buffer).map_err(|_| EntropyError)
}

/// A random 128-bit identifier, lower-case hex.
pub fn hex_id() -> Result<String, EntropyError> {
    let mut bytes = [0u8; 16];
    fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}
