//! Faults drawn at random per request, for the fault-storm suite: errors, latency spikes,
//! GET bodies cut short or stalled, uploads reset mid-body, a wrong ETag from
//! CompleteMultipartUpload. Errors are answered by the backend (after auth, like a real
//! store); everything that concerns the connection is done by the server's HTTP layer.

use std::time::{Duration, Instant};

use s3s::S3ErrorCode;

/// What a storm does; every rate is a share of the matching requests (0.0–1.0).
#[derive(Debug, Clone)]
pub struct Storm {
    /// Seed of the draws, so a failing run can be repeated.
    pub seed: u64,
    /// Share of requests (any operation) answered with `error`.
    pub error_rate: f64,
    /// The error answered, e.g. `SlowDown` (503) or `InternalError` (500).
    pub error: S3ErrorCode,
    /// Share of requests held for `spike` before they are served.
    pub spike_rate: f64,
    /// How long a spike holds a request.
    pub spike: Duration,
    /// Share of GetObject bodies that stop half-way and never continue (the connection
    /// stays open): only the client's own deadline ends them.
    pub stall_rate: f64,
    /// Share of GetObject bodies whose connection closes half-way (fewer bytes than
    /// Content-Length).
    pub cut_rate: f64,
    /// Share of uploads (PutObject, UploadPart) whose connection is closed after part of
    /// the body was read, with no answer.
    pub reset_upload_rate: f64,
    /// CompleteMultipartUpload answers with an ETag that is not the object's.
    pub wrong_complete_etag: bool,
}

impl Storm {
    /// A storm that does nothing yet; set the rates wanted.
    pub fn calm(seed: u64) -> Storm {
        Storm {
            seed,
            error_rate: 0.0,
            error: S3ErrorCode::InternalError,
            spike_rate: 0.0,
            spike: Duration::ZERO,
            stall_rate: 0.0,
            cut_rate: 0.0,
            reset_upload_rate: 0.0,
            wrong_complete_etag: false,
        }
    }
}

/// What the HTTP layer does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// Served as is.
    Pass,
    /// Body of the answer ends half-way with the connection closed.
    Cut,
    /// Body of the answer stops half-way and never continues.
    Stall,
    /// The connection closes while the request body is read.
    ResetUpload,
}

/// A storm under way: its settings, when it ends, and its random state.
pub(crate) struct Weather {
    pub storm: Storm,
    until: Option<Instant>,
    rng: u64,
}

impl Weather {
    pub fn new(storm: Storm, for_how_long: Option<Duration>) -> Weather {
        let rng = storm.seed ^ 0x9E37_79B9_7F4A_7C15;
        Weather { storm, until: for_how_long.map(|d| Instant::now() + d), rng }
    }

    /// Whether the storm is still on.
    pub fn active(&self) -> bool {
        self.until.is_none_or(|t| Instant::now() < t)
    }

    /// A uniform draw in [0, 1) (splitmix64).
    fn draw(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn hit(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.active() && self.draw() < rate
    }

    /// The error to answer this request with, if the draw says so.
    pub fn error(&mut self) -> Option<S3ErrorCode> {
        let rate = self.storm.error_rate;
        self.hit(rate).then(|| self.storm.error.clone())
    }

    /// How long to hold this request first.
    pub fn spike(&mut self) -> Duration {
        let rate = self.storm.spike_rate;
        if self.hit(rate) {
            self.storm.spike
        } else {
            Duration::ZERO
        }
    }

    /// What to do to the connection of a request of `kind`.
    pub fn wire(&mut self, kind: RequestKind) -> Wire {
        let (stall, cut, reset) = (self.storm.stall_rate, self.storm.cut_rate, self.storm.reset_upload_rate);
        match kind {
            RequestKind::GetObject if self.hit(stall) => Wire::Stall,
            RequestKind::GetObject if self.hit(cut) => Wire::Cut,
            RequestKind::Upload if self.hit(reset) => Wire::ResetUpload,
            _ => Wire::Pass,
        }
    }

    /// Whether CompleteMultipartUpload's answer gets a wrong ETag.
    pub fn wrong_etag(&self) -> bool {
        self.storm.wrong_complete_etag && self.active()
    }
}

/// The requests the HTTP layer treats differently, told from method, path and query
/// (path-style addressing, as the tests mount).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    GetObject,
    Upload,
    CompleteMultipart,
    Other,
}

impl RequestKind {
    pub fn of(req: &http::Request<hyper::body::Incoming>) -> RequestKind {
        let path = req.uri().path().trim_start_matches('/');
        let has_key = path.split_once('/').is_some_and(|(_, k)| !k.is_empty());
        let query = req.uri().query().unwrap_or("");
        let has = |name: &str| query.split('&').any(|kv| kv.split('=').next() == Some(name));
        match *req.method() {
            // The SDK adds `x-id=GetObject`; other GETs of a key carry their subresource.
            http::Method::GET if has_key && !["uploadId", "acl", "tagging", "attributes"].iter().any(|s| has(s)) => {
                RequestKind::GetObject
            }
            http::Method::PUT if has_key && !req.headers().contains_key("x-amz-copy-source") => RequestKind::Upload,
            http::Method::POST if has_key && has("uploadId") => RequestKind::CompleteMultipart,
            _ => RequestKind::Other,
        }
    }
}
