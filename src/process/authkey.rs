use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sys;

/// A process's authentication key: Python's `Process.authkey`.
///
/// The main process gets 32 random bytes; children inherit their parent's key unless one is
/// set. Connections between programs (`Listener`/`Client`) prove knowledge of it without
/// sending it. `Debug` does not print the bytes.
///
/// # Examples
/// ```
/// use multiproc::process::AuthKey;
/// let key = AuthKey::from(b"secret".to_vec());
/// assert_eq!(key.as_bytes(), b"secret");
/// assert_eq!(AuthKey::random().as_bytes().len(), 32);
/// assert_eq!(format!("{key:?}"), "AuthKey(..)");
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthKey(Vec<u8>);

impl AuthKey {
    /// 32 bytes from the kernel's random source.
    pub fn random() -> Self {
        let mut bytes = vec![0u8; 32];
        // getrandom(2) only fails before the entropy pool is ready at boot or on a bad buffer;
        // neither can happen to a running program with a valid Vec.
        sys::random_bytes(&mut bytes).expect("getrandom failed");
        AuthKey(bytes)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for AuthKey {
    fn from(bytes: Vec<u8>) -> Self {
        AuthKey(bytes)
    }
}

impl From<&[u8]> for AuthKey {
    fn from(bytes: &[u8]) -> Self {
        AuthKey(bytes.to_vec())
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(..)")
    }
}
