use std::sync::Arc;

use parking_lot::RwLock;

/// An access key pair, optionally with a session token.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// Access key id (not secret, but still kept out of logs).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// STS session token, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets, even in debug logs.
        f.debug_struct("StaticCredentials").field("access_key_id", &"<redacted>").finish_non_exhaustive()
    }
}

/// Where an S3 client gets its keys: fixed keys that can be swapped while running
/// (credential rotation without a remount), or the standard AWS provider chain.
#[derive(Clone, Debug)]
pub enum CredentialSource {
    /// Keys from a Secret or the caller; [`CredentialSource::rotate`] replaces them in place.
    Static(Arc<RwLock<StaticCredentials>>),
    /// Environment, profile, web identity token file, container/instance credentials.
    DefaultChain,
}

impl CredentialSource {
    /// Fixed keys.
    pub fn fixed(creds: StaticCredentials) -> Self {
        CredentialSource::Static(Arc::new(RwLock::new(creds)))
    }

    /// Replaces the keys every later request signs with. Returns false when this source
    /// is not a static one (nothing to rotate).
    pub fn rotate(&self, creds: StaticCredentials) -> bool {
        match self {
            CredentialSource::Static(cell) => {
                *cell.write() = creds;
                true
            }
            _ => false,
        }
    }
}
