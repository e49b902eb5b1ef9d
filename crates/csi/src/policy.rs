//! What the cluster admin lets volumes reach, set by the driver's own flags and never by a
//! volume: which directory `file://` stores may live below, and which endpoints an inline
//! volume (written by a pod author, not an admin) may name. See docs/SECURITY.md.

use std::path::{Component, Path, PathBuf};

use crate::error::{CsiError, CsiResult};
use crate::volume::{normalize_endpoint, Endpoint};

/// The admin's limits on where volumes' data may be. The default refuses every `file://`
/// store and lets inline volumes reach only the driver's default endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorePolicy {
    /// `file://` stores are allowed only at or below this directory (`--file-store-root`);
    /// `None`: refused, whoever names them.
    pub file_root: Option<PathBuf>,
    /// Endpoints an inline volume may name besides the driver's default, and `http://`
    /// STS endpoints allowed to receive a pod's token in clear (`--allow-endpoint`),
    /// each normalized as a volume's endpoint is.
    pub allowed_endpoints: Vec<String>,
}

impl StorePolicy {
    /// A policy from the driver's flags, each value checked and normalized.
    pub fn new(file_root: Option<&Path>, allowed_endpoints: &[String]) -> CsiResult<Self> {
        let file_root = match file_root {
            None => None,
            Some(p) => {
                if !plain_absolute(p) {
                    return Err(CsiError::invalid(format!(
                        "--file-store-root {}: must be an absolute path without . or ..",
                        p.display()
                    )));
                }
                // The root itself is the admin's; symlinks in it are resolved once here.
                std::fs::create_dir_all(p)
                    .and_then(|_| p.canonicalize())
                    .map(Some)
                    .map_err(|e| CsiError::invalid(format!("--file-store-root {}: {e}", p.display())))?
            }
        };
        let allowed_endpoints = allowed_endpoints
            .iter()
            .flat_map(|v| v.split(','))
            .filter(|v| !v.trim().is_empty())
            .map(|v| normalize_endpoint(v, "--allow-endpoint"))
            .collect::<CsiResult<Vec<_>>>()?;
        Ok(StorePolicy { file_root, allowed_endpoints })
    }

    /// The directory a `file://` endpoint names, when the policy allows it: an absolute
    /// path with no `.` or `..`, at or below [`StorePolicy::file_root`] after every
    /// symlink that already exists on the way is resolved. Anything else is
    /// INVALID_ARGUMENT naming the endpoint.
    pub fn file_store_dir(&self, url: &str) -> CsiResult<PathBuf> {
        let raw = url.strip_prefix("file://").unwrap_or(url);
        let Some(root) = &self.file_root else {
            return Err(CsiError::invalid(format!(
                "endpoint {url:?}: file:// stores are refused by this driver (an admin allows them below one directory with --file-store-root)"
            )));
        };
        let path = Path::new(raw);
        if !plain_absolute(path) {
            return Err(CsiError::invalid(format!(
                "endpoint {url:?}: a file:// path must be absolute, without . or .."
            )));
        }
        let outside = || {
            CsiError::invalid(format!(
                "endpoint {url:?}: file:// stores are allowed only below {} (--file-store-root)",
                root.display()
            ))
        };
        // The deepest part of the path that exists, with its symlinks resolved, must be
        // inside the root; what does not exist yet is created below it.
        let mut existing = path.to_path_buf();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (existing.file_name().map(|n| n.to_owned()), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name);
                    existing = parent.to_path_buf();
                }
                _ => return Err(outside()),
            }
        }
        let mut resolved = existing.canonicalize().map_err(|e| CsiError::invalid(format!("endpoint {url:?}: {e}")))?;
        if !resolved.starts_with(root) {
            return Err(outside());
        }
        for name in rest.into_iter().rev() {
            resolved.push(name);
        }
        Ok(resolved)
    }

    /// Whether an inline volume may reach `endpoint`: the driver's default endpoint (or
    /// AWS by region when the driver has none) and the admin's allowed endpoints only.
    pub fn check_inline_endpoint(&self, endpoint: &Endpoint, defaults: &Endpoint) -> CsiResult<()> {
        let Some(url) = endpoint.url.as_deref() else {
            // AWS itself, by region: what the pod could reach with its own keys anyway.
            return Ok(());
        };
        if defaults.url.as_deref() == Some(url) || self.allowed_endpoints.iter().any(|a| a == url) {
            return Ok(());
        }
        Err(CsiError::invalid(format!(
            "inline volume endpoint {url:?} is not allowed: an inline volume may name only the driver's default endpoint{} or one the admin allows with --allow-endpoint",
            defaults.url.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
        )))
    }

    /// Whether a pod's token may be sent to `sts_endpoint`: `https://` always for volumes
    /// an admin wrote; `http://` (the token in clear) and, for inline volumes, any
    /// endpoint only when the admin allows it with `--allow-endpoint`.
    pub fn check_sts_endpoint(&self, sts_endpoint: &str, inline: bool) -> CsiResult<()> {
        let allowed = self.allowed_endpoints.iter().any(|a| a == sts_endpoint);
        if allowed || (!inline && sts_endpoint.starts_with("https://")) {
            return Ok(());
        }
        let why = if sts_endpoint.starts_with("https://") {
            "an inline volume may name only an STS endpoint the admin allows with --allow-endpoint"
        } else {
            "it would carry the pod's service-account token in clear; an admin allows it with --allow-endpoint"
        };
        Err(CsiError::invalid(format!("stsEndpoint {sts_endpoint:?} is refused: {why}")))
    }
}

/// Whether `p` is absolute and made of plain names only (no `.` or `..`).
fn plain_absolute(p: &Path) -> bool {
    p.is_absolute() && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(root: &Path) -> StorePolicy {
        StorePolicy::new(Some(root), &["http://minio.store:9000".into()]).unwrap()
    }

    #[test]
    fn file_stores_are_refused_without_a_root() {
        let e = StorePolicy::default().file_store_dir("file:///var/lib/kubelet").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.to_string().contains("file:///var/lib/kubelet") && e.to_string().contains("--file-store-root"),
            "{e}"
        );
    }

    #[test]
    fn file_stores_must_stay_below_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("stores");
        let p = policy(&root);
        let inside = format!("file://{}/team-a", root.display());
        assert_eq!(p.file_store_dir(&inside).unwrap(), root.canonicalize().unwrap().join("team-a"));
        for bad in [
            "file:///var/lib/kubelet".to_string(),
            format!("file://{}/../escape", root.display()),
            format!("file://{}", d.path().display()),
            "file://relative/dir".to_string(),
        ] {
            let e = p.file_store_dir(&bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.to_string().contains(&bad), "the error names the endpoint: {e}");
        }
        // A symlink inside the root that leads out of it is followed, and refused.
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        assert!(p.file_store_dir(&format!("file://{}/link/x", root.display())).is_err());
    }

    #[test]
    fn inline_endpoints_are_the_default_or_allowed_ones() {
        let p =
            StorePolicy::new(None, &["http://minio.store:9000, https://oss-cn-hangzhou.aliyuncs.com".into()]).unwrap();
        let defaults = Endpoint { url: Some("https://s3.example".into()), ..Default::default() };
        let at = |u: &str| Endpoint { url: Some(u.to_string()), ..Default::default() };
        p.check_inline_endpoint(&at("https://s3.example"), &defaults).unwrap();
        p.check_inline_endpoint(&at("http://minio.store:9000"), &defaults).unwrap();
        p.check_inline_endpoint(&at("https://oss-cn-hangzhou.aliyuncs.com"), &defaults).unwrap();
        p.check_inline_endpoint(&Endpoint::default(), &defaults).unwrap();
        let e = p.check_inline_endpoint(&at("http://169.254.169.254"), &defaults).unwrap_err();
        assert!(e.to_string().contains("http://169.254.169.254"), "{e}");
    }

    #[test]
    fn sts_endpoints_in_clear_need_the_admin() {
        let p = StorePolicy::new(None, &["http://sts.local:8080".into()]).unwrap();
        p.check_sts_endpoint("https://sts.amazonaws.com", false).unwrap();
        p.check_sts_endpoint("http://sts.local:8080", true).unwrap();
        assert!(p.check_sts_endpoint("http://sts.other:8080", false).unwrap_err().to_string().contains("in clear"));
        assert!(p.check_sts_endpoint("https://sts.evil", true).is_err());
    }
}
