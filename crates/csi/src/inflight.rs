use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::CsiError;

/// Names of volumes with an operation in flight. The CSI sidecars retry on ABORTED, so
/// a second call for the same volume fails fast instead of racing the first.
#[derive(Clone, Default)]
pub struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
}

/// Held while an operation runs; releases the name when dropped.
pub struct InFlightGuard {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Claims `key`, or ABORTED when another operation holds it.
    pub fn claim(&self, key: &str) -> Result<InFlightGuard, CsiError> {
        if !self.set.lock().insert(key.to_string()) {
            return Err(CsiError::Aborted(format!("an operation on volume {key:?} is already in progress")));
        }
        Ok(InFlightGuard { set: self.set.clone(), key: key.to_string() })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_is_aborted_until_release() {
        let f = InFlight::default();
        let g = f.claim("v").unwrap();
        assert!(matches!(f.claim("v"), Err(CsiError::Aborted(_))));
        assert!(f.claim("w").is_ok());
        drop(g);
        assert!(f.claim("v").is_ok());
    }
}
