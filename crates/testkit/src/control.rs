use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Error, S3ErrorCode, S3Result};
use std::sync::Arc;

use crate::storm::{RequestKind, Storm, Weather, Wire};

/// A failure to inject: the next `count` requests of `op` (or of any operation when
/// `op` is `None`) fail with `code`.
#[derive(Debug, Clone)]
pub struct Fault {
    /// S3 operation name as s3s names it (`PutObject`, `GetObject`, `UploadPart`...).
    pub op: Option<String>,
    /// Error returned, e.g. `InternalError` (500) or `SlowDown` (503).
    pub code: S3ErrorCode,
    /// How many requests fail before the fault clears; `usize::MAX` = until cleared.
    pub count: usize,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, String>,
    faults: Vec<Fault>,
    counters: HashMap<String, u64>,
    latency: Duration,
    /// Extra delay per operation name (`ListObjectsV2`, ...).
    op_latency: HashMap<String, Duration>,
    drop_connections: bool,
    max_copy_size: Option<u64>,
    oss_headers: bool,
    weather: Option<Weather>,
}

impl State {
    /// One more of `what` (an operation, or something seen in a request).
    fn count(&mut self, what: &str) {
        *self.counters.entry(what.to_string()).or_default() += 1;
    }
}

/// The test's handle on the server's behaviour; cheap to clone.
#[derive(Clone, Default)]
pub struct Control {
    state: Arc<Mutex<State>>,
}

impl Control {
    /// Accepts `access_key` with `secret` from now on.
    pub fn add_key(&self, access_key: &str, secret: &str) {
        self.state.lock().keys.insert(access_key.into(), secret.into());
    }

    /// Refuses `access_key` from now on (InvalidAccessKeyId).
    pub fn revoke_key(&self, access_key: &str) {
        self.state.lock().keys.remove(access_key);
    }

    /// Adds a fault.
    pub fn inject(&self, fault: Fault) {
        self.state.lock().faults.push(fault);
    }

    /// Fails the next `count` requests of `op` with `code`.
    pub fn fail_next(&self, op: &str, code: S3ErrorCode, count: usize) {
        self.inject(Fault { op: Some(op.into()), code, count });
    }

    /// Removes every fault, storm, latency and connection dropping.
    pub fn clear_faults(&self) {
        let mut st = self.state.lock();
        st.faults.clear();
        st.weather = None;
        st.latency = Duration::ZERO;
        st.op_latency.clear();
        st.drop_connections = false;
    }

    /// Starts a storm of random faults, for `for_how_long` (a burst) or until cleared.
    /// Replaces any storm under way.
    pub fn set_storm(&self, storm: Storm, for_how_long: Option<Duration>) {
        self.state.lock().weather = Some(Weather::new(storm, for_how_long));
    }

    /// Ends the storm.
    pub fn clear_storm(&self) {
        self.state.lock().weather = None;
    }

    /// How long the storm holds this request, and what it does to its connection.
    pub(crate) fn weather_for(&self, kind: RequestKind) -> (Duration, Wire) {
        let mut st = self.state.lock();
        let (spike, wire) = match st.weather.as_mut() {
            Some(w) => (w.spike(), w.wire(kind)),
            None => return (Duration::ZERO, Wire::Pass),
        };
        if !spike.is_zero() {
            st.count("storm:spike");
        }
        if wire != Wire::Pass {
            st.count(&format!("storm:{wire:?}"));
        }
        (spike, wire)
    }

    /// Whether CompleteMultipartUpload's answer gets a wrong ETag now.
    pub(crate) fn wrong_complete_etag(&self) -> bool {
        let mut st = self.state.lock();
        let on = st.weather.as_ref().is_some_and(Weather::wrong_etag);
        if on {
            st.count("storm:WrongEtag");
        }
        on
    }

    /// Faults the storms injected so far, of every kind (`storm:*` counters).
    pub fn storm_faults(&self) -> u64 {
        self.state.lock().counters.iter().filter(|(k, _)| k.starts_with("storm:")).map(|(_, v)| v).sum()
    }

    /// Delays every request by `d`.
    pub fn set_latency(&self, d: Duration) {
        self.state.lock().latency = d;
    }

    /// Delays every request of operation `op` (`ListObjectsV2`, ...) by `d` more: a store
    /// on which one kind of request is slow.
    pub fn set_op_latency(&self, op: &str, d: Duration) {
        self.state.lock().op_latency.insert(op.to_string(), d);
    }

    /// While true, new connections are closed without an answer (a store that is down).
    pub fn set_drop_connections(&self, on: bool) {
        self.state.lock().drop_connections = on;
    }

    /// Answer user metadata as `x-oss-meta-*` headers, as Alibaba OSS does.
    pub fn set_oss_metadata_headers(&self, on: bool) {
        self.state.lock().oss_headers = on;
    }

    pub(crate) fn oss_headers(&self) -> bool {
        self.state.lock().oss_headers
    }

    /// Largest object CopyObject accepts (AWS: 5 GiB); larger ones need UploadPartCopy.
    pub fn set_max_copy_size(&self, bytes: u64) {
        self.state.lock().max_copy_size = Some(bytes);
    }

    pub(crate) fn max_copy_size(&self) -> u64 {
        self.state.lock().max_copy_size.unwrap_or(5 << 30)
    }

    /// Requests served for `op` so far (after auth, faults included).
    pub fn count(&self, op: &str) -> u64 {
        self.state.lock().counters.get(op).copied().unwrap_or(0)
    }

    /// Every operation's request count.
    pub fn counts(&self) -> HashMap<String, u64> {
        self.state.lock().counters.clone()
    }

    /// Zeroes the counters.
    pub fn reset_counts(&self) {
        self.state.lock().counters.clear();
    }

    pub(crate) fn dropping(&self) -> bool {
        self.state.lock().drop_connections
    }

    pub(crate) fn latency(&self, op: &str) -> Duration {
        let st = self.state.lock();
        st.latency + st.op_latency.get(op).copied().unwrap_or_default()
    }

    /// Counts a request of `op` and returns the injected error for it, if any.
    /// Counts something seen in a request (`UnsignedPayload`), readable with `count`.
    pub(crate) fn note(&self, what: &str) {
        self.state.lock().count(what);
    }

    pub(crate) fn enter(&self, op: &str) -> S3Result<()> {
        let mut st = self.state.lock();
        st.count(op);
        let hit = st.faults.iter().position(|f| f.count > 0 && f.op.as_deref().is_none_or(|o| o == op));
        if let Some(i) = hit {
            let f = &mut st.faults[i];
            if f.count != usize::MAX {
                f.count -= 1;
            }
            let code = f.code.clone();
            if st.faults[i].count == 0 {
                st.faults.remove(i);
            }
            return Err(S3Error::with_message(code, format!("injected fault on {op}")));
        }
        if let Some(code) = st.weather.as_mut().and_then(Weather::error) {
            st.count("storm:error");
            return Err(S3Error::with_message(code, format!("storm on {op}")));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl S3Auth for Control {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.state.lock().keys.get(access_key) {
            Some(s) => Ok(SecretKey::from(s.clone())),
            None => {
                // AWS answers 403 here; s3s's default for this code is 400.
                let mut e = S3Error::with_message(
                    S3ErrorCode::InvalidAccessKeyId,
                    "The AWS Access Key Id you provided does not exist in our records.",
                );
                e.set_status_code(http::StatusCode::FORBIDDEN);
                Err(e)
            }
        }
    }
}
