//! What `s3vol check` checks: a mount's source with the environment's keys, or a CSI
//! volume resolved from its id, attributes and node secret exactly as the node does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use s3vol_csi::volume::{SecretValues, VolumeSpec};
use s3vol_fs::MountOptions;
use s3vol_store::{
    AddressingStyle, CredentialSource, FileStore, Location, ObjectStore, S3Config, S3Store, StaticCredentials,
    StoreKind,
};

use crate::cli::CheckArgs;

/// Where the data is.
pub enum Where {
    /// A local directory (`file:///dir`): only the store steps apply.
    File(PathBuf),
    /// An S3 endpoint (AWS's regional one when none was given).
    S3 {
        /// The URL the network steps reach.
        endpoint: String,
        /// What the S3 client is given (`None`: AWS for the region).
        explicit: Option<String>,
        region: String,
        addressing: AddressingStyle,
    },
}

/// Keys, and where they came from (never the keys themselves in output).
enum Keys {
    Fixed(StaticCredentials, String),
    DefaultChain,
}

/// Everything the steps need.
pub struct Target {
    /// What the user named (`s3://b/p`, a volume id).
    pub label: String,
    pub bucket: String,
    pub prefix: String,
    pub place: Where,
    keys: Keys,
    /// Skip the writing steps.
    pub read_only: bool,
    list_v1: bool,
}

impl Target {
    /// Resolves the arguments; bad input is an error naming the value, before any request.
    pub fn from_args(args: &CheckArgs) -> anyhow::Result<Self> {
        let env_keys = env_keys();
        if let Some(id) = &args.volume_id {
            let attrs = parse_pairs(&args.attributes)?;
            let secret_map = match &args.secret_file {
                Some(p) => read_secret_file(p)?,
                None => HashMap::new(),
            };
            let secret = SecretValues::from_map(&secret_map).map_err(|e| anyhow!("--secret-file: {e}"))?;
            let spec = VolumeSpec::resolve(id, &attrs, &secret).map_err(|e| anyhow!("volume {id:?}: {e}"))?;
            if spec.pod_identity.is_some() {
                bail!("volume {id:?} takes its keys from the pod's service-account token (authenticationSource: pod); check it with keys of the role in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and without that attribute");
            }
            let opts =
                MountOptions::parse(&spec.mount_options).map_err(|e| anyhow!("volume {id:?} mount options: {e}"))?;
            let keys = match (secret.credentials, args.secret_file.as_ref()) {
                (Some(c), Some(p)) => Keys::Fixed(c, format!("accessKeyID/secretAccessKey from {}", p.display())),
                _ => env_keys,
            };
            let place = match spec.endpoint.url.as_deref().and_then(|u| u.strip_prefix("file://")) {
                Some(dir) => Where::File(PathBuf::from(dir)),
                None => {
                    s3_place(spec.endpoint.url.clone(), spec.endpoint.region().to_string(), spec.endpoint.addressing)
                }
            };
            return Ok(Target {
                label: format!("volume {id}"),
                bucket: spec.bucket,
                prefix: spec.prefix,
                place,
                keys,
                read_only: args.read_only || spec.read_only || opts.read_only,
                list_v1: opts.list_type == 1,
            });
        }
        let source = args.source.as_deref().context("name what to check: s3://BUCKET[/PREFIX] or --volume-id")?;
        let opts = MountOptions::parse(&args.options).map_err(|e| anyhow!("{e}"))?;
        let loc = Location::parse(source).map_err(|e| anyhow!("{e}"))?;
        let addressing: AddressingStyle =
            args.addressing_style.parse().map_err(|e: String| anyhow!("--addressing-style: {e}"))?;
        let place = match loc.kind {
            StoreKind::File(dir) => Where::File(dir),
            StoreKind::S3 => s3_place(args.endpoint.clone(), args.region.clone(), addressing),
        };
        Ok(Target {
            label: source.to_string(),
            bucket: loc.bucket,
            prefix: loc.prefix,
            place,
            keys: env_keys,
            read_only: args.read_only || opts.read_only,
            list_v1: opts.list_type == 1,
        })
    }

    /// The endpoint in one phrase, for the heading.
    pub fn describe(&self) -> String {
        match &self.place {
            Where::File(d) => format!("the local directory {}", d.display()),
            Where::S3 { endpoint, region, addressing, .. } => {
                let style = if *addressing == AddressingStyle::Virtual { "virtual-host" } else { "path" };
                format!("{endpoint} (region {region}, {style} addressing)")
            }
        }
    }

    /// The bucket as part of the host name, with virtual-host addressing.
    pub fn virtual_host_bucket(&self) -> Option<&str> {
        match &self.place {
            Where::S3 { addressing: AddressingStyle::Virtual, .. } => Some(&self.bucket),
            _ => None,
        }
    }

    /// Where the keys come from, never the keys.
    pub fn credentials_source(&self) -> String {
        match &self.keys {
            Keys::Fixed(c, from) => {
                let token = if c.session_token.is_some() { " with a session token" } else { "" };
                format!("{from}{token}")
            }
            Keys::DefaultChain => {
                let how = if std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
                    "web identity (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN)".to_string()
                } else if let Ok(p) = std::env::var("AWS_PROFILE") {
                    format!("profile {p:?}")
                } else {
                    "profile files or instance metadata".to_string()
                };
                format!("the AWS default chain: {how} (the bucket step shows whether it found any)")
            }
        }
    }

    /// The prefix as a URL, for messages.
    pub fn shown_prefix(&self) -> String {
        match &self.place {
            Where::File(d) => d.display().to_string(),
            Where::S3 { .. } => format!("s3://{}/{}", self.bucket, self.prefix),
        }
    }

    /// The store client a mount would use.
    pub async fn connect(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        Ok(match &self.place {
            Where::File(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                Arc::new(FileStore::new(dir))
            }
            Where::S3 { explicit, region, addressing, .. } => {
                let source = match &self.keys {
                    Keys::Fixed(c, _) => CredentialSource::fixed(c.clone()),
                    Keys::DefaultChain => CredentialSource::DefaultChain,
                };
                let mut cfg = S3Config::new(explicit.clone(), region.clone(), source);
                cfg.addressing = *addressing;
                cfg.list_v1 = self.list_v1;
                // A check reports; it does not wait out retries of a store that refuses.
                cfg.max_attempts = 1;
                cfg.attempt_timeout = std::time::Duration::from_secs(15);
                Arc::new(S3Store::new(cfg).await?)
            }
        })
    }
}

fn s3_place(explicit: Option<String>, region: String, addressing: AddressingStyle) -> Where {
    let endpoint = explicit.clone().unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    Where::S3 { endpoint, explicit, region, addressing }
}

/// Keys from the environment, as `s3vol mount` takes them.
fn env_keys() -> Keys {
    match crate::mount_cmd::keys_from_env() {
        Some(keys) => Keys::Fixed(keys, "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the environment".into()),
        None => Keys::DefaultChain,
    }
}

fn parse_pairs(items: &[String]) -> anyhow::Result<HashMap<String, String>> {
    items
        .iter()
        .map(|i| match i.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => bail!("--attribute {i:?} is not KEY=VALUE"),
        })
        .collect()
}

/// A Secret as `kubectl get secret -o json` prints it (`data` base64, or `stringData`), a
/// flat JSON object, or `KEY=VALUE` lines.
fn read_secret_file(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--secret-file {}", path.display()))?;
    parse_secret(&text).map_err(|e| anyhow!("--secret-file {}: {e}", path.display()))
}

fn parse_secret(text: &str) -> Result<HashMap<String, String>, String> {
    if text.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let mut out = HashMap::new();
        if let Some(data) = v.get("data").and_then(|d| d.as_object()) {
            for (k, val) in data {
                let raw = val.as_str().ok_or_else(|| format!("data.{k} is not a string"))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(raw.trim())
                    .map_err(|e| format!("data.{k} is not base64: {e}"))?;
                out.insert(k.clone(), String::from_utf8(bytes).map_err(|_| format!("data.{k} is not UTF-8"))?);
            }
        }
        let plain = v.get("stringData").or(if v.get("data").is_none() { Some(&v) } else { None });
        if let Some(obj) = plain.and_then(|d| d.as_object()) {
            for (k, val) in obj {
                if let Some(s) = val.as_str() {
                    out.insert(k.clone(), s.to_string());
                }
            }
        }
        return Ok(out);
    }
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| format!("line {} is not KEY=VALUE", n + 1))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_as_kubectl_prints_them_or_as_lines() {
        let json = r#"{"apiVersion":"v1","kind":"Secret","data":{"accessKeyID":"QUtJQQ==","endpoint":"aHR0cDovL3g6OTAwMA=="}}"#;
        let m = parse_secret(json).unwrap();
        assert_eq!(m["accessKeyID"], "AKIA");
        assert_eq!(m["endpoint"], "http://x:9000");
        let m = parse_secret(r#"{"stringData":{"akId":"a","akSecret":"b"}}"#).unwrap();
        assert_eq!((m["akId"].as_str(), m["akSecret"].as_str()), ("a", "b"));
        let m = parse_secret("# keys\naccessKeyID=AK\nsecretAccessKey = SK\n").unwrap();
        assert_eq!(m["secretAccessKey"], "SK");
        assert!(parse_secret("just words").unwrap_err().contains("line 1"));
        assert!(parse_secret(r#"{"data":{"k":"***"}}"#).unwrap_err().contains("data.k"));
    }
}
