//! What a volume is: its id, the StorageClass parameters that shape it, the static-PV
//! attributes that point at existing data, and the secrets that open it. Attribute and
//! secret names of the Alibaba OSS driver and of k8s-csi-s3 are accepted as aliases so
//! that existing PVs work after changing only `driver:`.

use std::collections::{BTreeMap, HashMap};

use s3vol_fs::{translate_foreign, MountOptions};
use s3vol_store::{normalize_prefix, AddressingStyle, StaticCredentials};

use crate::error::{CsiError, CsiResult};
use crate::node::launcher::ServerResources;
use crate::pod_identity::PodIdentity;

/// Longest volume id the CSI spec lets us return.
pub const MAX_VOLUME_ID: usize = 128;
/// Region used when none is given (what S3-compatible stores expect).
pub const DEFAULT_REGION: &str = "us-east-1";
/// Capacity recorded when a claim asks for none.
pub const DEFAULT_CAPACITY: i64 = 1 << 30;

/// What happens to a dynamic volume's data when its PV is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// Remove every object under the prefix (or the bucket).
    Delete,
    /// Leave everything in place.
    Retain,
    /// Move the objects to `_archived/<pv>/<timestamp>/` and remove the originals.
    Archive,
}

impl std::str::FromStr for OnDelete {
    type Err = CsiError;
    fn from_str(s: &str) -> CsiResult<Self> {
        match s {
            "delete" => Ok(OnDelete::Delete),
            "retain" => Ok(OnDelete::Retain),
            "archive" => Ok(OnDelete::Archive),
            other => {
                Err(CsiError::invalid(format!("parameter onDelete={other:?}: expected delete, retain or archive")))
            }
        }
    }
}

/// Where a store is: endpoint, region, addressing. No secrets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// `https://host[:port]`, `http://...`, `file:///dir`; `None` = AWS for the region.
    pub url: Option<String>,
    /// Signing region; `None` = [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// Path or virtual-host style.
    pub addressing: AddressingStyle,
}

impl Endpoint {
    /// The region to sign with.
    pub fn region(&self) -> &str {
        self.region.as_deref().unwrap_or(DEFAULT_REGION)
    }
}

/// Normalizes an endpoint: a bare host (`oss-cn-hangzhou.aliyuncs.com`, as the OSS
/// driver's `url` attribute has it) means `https://` + host.
pub fn normalize_endpoint(raw: &str, field: &str) -> CsiResult<String> {
    let raw = raw.trim().trim_end_matches('/');
    if raw.is_empty() {
        return Err(CsiError::invalid(format!("{field} is empty")));
    }
    if raw.chars().any(|c| c.is_whitespace() || c == '|') {
        return Err(CsiError::invalid(format!("{field}={raw:?} is not a URL")));
    }
    if raw.starts_with("http://") || raw.starts_with("https://") || raw.starts_with("file:///") {
        Ok(raw.to_string())
    } else if raw.contains("://") {
        Err(CsiError::invalid(format!("{field}={raw:?}: only http, https and file URLs are supported")))
    } else {
        Ok(format!("https://{raw}"))
    }
}

/// What a provider's endpoint implies. Alibaba OSS (`oss-<region>[-internal].aliyuncs.com`)
/// and Tencent COS (`cos.<region>.myqcloud.com`) accept only virtual-hosted requests and
/// sign V4 with the region ID (`cn-hangzhou`, not `oss-cn-hangzhou`); PVs of their drivers
/// name only the endpoint, so region and addressing come from it.
pub fn provider_defaults(url: &str) -> (Option<String>, Option<AddressingStyle>) {
    let host = url.split("://").nth(1).unwrap_or(url).split(['/', ':']).next().unwrap_or("");
    if let Some(sub) = host.strip_suffix(".aliyuncs.com") {
        let first = sub.rsplit('.').next().unwrap_or(sub);
        let region = first.strip_prefix("oss-").map(|r| r.strip_suffix("-internal").unwrap_or(r).to_string());
        return (region.filter(|r| !r.is_empty() && r != "accelerate"), Some(AddressingStyle::Virtual));
    }
    if let Some(sub) = host.strip_suffix(".myqcloud.com") {
        let mut parts = sub.rsplit('.');
        let region = parts.next().filter(|_| parts.next() == Some("cos")).map(str::to_string);
        return (region, Some(AddressingStyle::Virtual));
    }
    (None, None)
}

/// Identifies a volume without any database: bucket, prefix, region, endpoint and
/// addressing style, everything a later call needs to reach the store exactly as
/// CreateVolume did. Text form: `v1|bucket|prefix|region|endpoint` when the addressing
/// is the one the endpoint implies (virtual-hosted for Alibaba OSS and Tencent COS, path
/// elsewhere), else `v2|bucket|prefix|region|endpoint|virtual` (or `|path`). An empty
/// prefix means the volume is the whole bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeId {
    /// Bucket.
    pub bucket: String,
    /// Prefix, empty or ending in `/`.
    pub prefix: String,
    /// Region, when recorded.
    pub region: Option<String>,
    /// Endpoint, when recorded (`https://` dropped to save space).
    pub endpoint: Option<String>,
    /// How requests name the bucket.
    pub addressing: AddressingStyle,
}

/// The addressing style an endpoint implies when nothing else says.
pub fn implied_addressing(url: Option<&str>) -> AddressingStyle {
    url.and_then(|u| provider_defaults(u).1).unwrap_or(AddressingStyle::Path)
}

impl VolumeId {
    /// The text form, whatever its length.
    fn text(&self) -> String {
        let ep = self.endpoint.as_deref().map(|e| e.strip_prefix("https://").unwrap_or(e)).unwrap_or("");
        let region = self.region.as_deref().unwrap_or("");
        if self.addressing == implied_addressing(self.endpoint.as_deref()) {
            format!("v1|{}|{}|{region}|{ep}", self.bucket, self.prefix)
        } else {
            format!("v2|{}|{}|{region}|{ep}|{}", self.bucket, self.prefix, self.addressing.as_str())
        }
    }

    /// Where the volume's store is, as recorded: what every call after CreateVolume
    /// reaches (a secret's endpoint never redirects them); `None` region = the default.
    pub fn location(&self) -> Endpoint {
        Endpoint { url: self.endpoint.clone(), region: self.region.clone(), addressing: self.addressing }
    }

    /// Length of the text form.
    pub fn encoded_len(&self) -> usize {
        self.text().len()
    }

    /// Encodes. Nothing is ever dropped (DeleteVolume needs bucket, prefix, region and
    /// endpoint); an id over 128 bytes is an error naming what made it long.
    pub fn encode(&self) -> CsiResult<String> {
        let id = self.text();
        if id.len() <= MAX_VOLUME_ID {
            return Ok(id);
        }
        Err(CsiError::invalid(format!(
            "bucket {:?}, prefix {:?}, region {:?} and endpoint {:?} do not fit in a {MAX_VOLUME_ID}-byte volume id ({} bytes); use a shorter prefix",
            self.bucket,
            self.prefix,
            self.region.as_deref().unwrap_or(""),
            self.endpoint.as_deref().unwrap_or(""),
            id.len()
        )))
    }

    /// Parses an id made by [`VolumeId::encode`]; `None` for anything else.
    pub fn parse(id: &str) -> Option<VolumeId> {
        // Longer than any id encode makes (found by fuzzing: it parsed, then could not
        // be encoded again).
        if id.len() > MAX_VOLUME_ID {
            return None;
        }
        let mut parts = id.split('|');
        let version = parts.next()?;
        if version != "v1" && version != "v2" {
            return None;
        }
        let bucket = parts.next()?.to_string();
        let prefix = parts.next()?.to_string();
        let region = parts.next()?;
        let ep = parts.next()?;
        // Only the canonical name passes: the id must be the text encode makes (below).
        let addressing = match version {
            "v2" => Some(parts.next()?.parse::<AddressingStyle>().ok()?),
            _ => None,
        };
        if parts.next().is_some() || bucket.is_empty() || !(prefix.is_empty() || prefix.ends_with('/')) {
            return None;
        }
        let endpoint = match ep {
            "" => None,
            e if e.starts_with("http://") || e.starts_with("file://") => Some(e.to_string()),
            e => Some(format!("https://{e}")),
        };
        let addressing = addressing.unwrap_or_else(|| implied_addressing(endpoint.as_deref()));
        let parsed =
            VolumeId { bucket, prefix, region: (!region.is_empty()).then(|| region.to_string()), endpoint, addressing };
        // One text per id: a v2 id naming the implied style is not one encode makes.
        (parsed.text() == id).then_some(parsed)
    }
}

/// Credentials and connection overrides found in a CSI secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues {
    /// Keys, when the secret has them; else the default AWS chain is used.
    pub credentials: Option<StaticCredentials>,
    /// `endpoint` key (k8s-csi-s3 keeps the endpoint in the secret).
    pub endpoint: Option<String>,
    /// `region` key.
    pub region: Option<String>,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValues")
            .field("credentials", &self.credentials.as_ref().map(|_| "<redacted>"))
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish()
    }
}

fn first<'a>(m: &'a HashMap<String, String>, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| m.get(*n)).map(String::as_str).filter(|v| !v.is_empty())
}

impl SecretValues {
    /// Reads a CSI secret map. Key names: `accessKeyID`/`secretAccessKey`/`sessionToken`
    /// (s3vol, k8s-csi-s3), `akId`/`akSecret`/`securityToken` (Alibaba OSS driver), `SecretId`/`SecretKey` (Tencent COS driver),
    /// `endpoint`, `region`. Values are never echoed in errors.
    pub fn from_map(m: &HashMap<String, String>) -> CsiResult<Self> {
        let ak = first(m, &["accessKeyID", "accessKeyId", "akId", "SecretId", "AWS_ACCESS_KEY_ID"]);
        let sk = first(m, &["secretAccessKey", "akSecret", "SecretKey", "AWS_SECRET_ACCESS_KEY"]);
        let token = first(m, &["sessionToken", "securityToken", "AWS_SESSION_TOKEN"]);
        let credentials = match (ak, sk) {
            (Some(a), Some(s)) => Some(StaticCredentials {
                access_key_id: a.to_string(),
                secret_access_key: s.to_string(),
                session_token: token.map(str::to_string),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(CsiError::invalid("secret has an access key id but no secretAccessKey (or akSecret)"))
            }
            (None, Some(_)) => {
                return Err(CsiError::invalid("secret has a secretAccessKey but no accessKeyID (or akId)"))
            }
        };
        // The error names the key the secret really has (`url` is the OSS driver's name).
        let endpoint = ["endpoint", "url"]
            .iter()
            .find_map(|k| first(m, &[k]).map(|e| normalize_endpoint(e, &format!("secret key {k}"))))
            .transpose()?;
        Ok(SecretValues { credentials, endpoint, region: first(m, &["region"]).map(str::to_string) })
    }
}

/// StorageClass parameters of a dynamic volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionParams {
    /// Shared bucket (prefix per volume); `None` = a new bucket per volume.
    pub bucket: Option<String>,
    /// Base prefix inside the shared bucket.
    pub base_prefix: String,
    /// Store location.
    pub endpoint: Endpoint,
    /// Data policy at DeleteVolume.
    pub on_delete: OnDelete,
    /// Mount options, validated now so a typo fails at provisioning, not at mount.
    pub mount_options: Vec<String>,
    /// Whether capacity is enforced (ENOSPC past it).
    pub hard_quota: bool,
    /// Limits of the volume's mount pod (`mountPodMemory`, `mountPodCPU`).
    pub server_resources: ServerResources,
    /// Keys from the pod's service account (`authenticationSource: pod`).
    pub pod_identity: Option<PodIdentity>,
}

impl ProvisionParams {
    /// Parses and validates StorageClass parameters; an unknown key is INVALID_ARGUMENT.
    pub fn parse(params: &HashMap<String, String>) -> CsiResult<Self> {
        let mut p = ProvisionParams {
            bucket: None,
            base_prefix: String::new(),
            endpoint: Endpoint::default(),
            on_delete: OnDelete::Delete,
            mount_options: Vec::new(),
            hard_quota: false,
            server_resources: ServerResources::default(),
            pod_identity: None,
        };
        for (k, v) in params {
            match k.as_str() {
                "bucket" => p.bucket = Some(validate_bucket(v, "parameter bucket")?),
                "prefix" | "path" => p.base_prefix = validate_prefix(v, k)?,
                "endpoint" | "url" => p.endpoint.url = Some(normalize_endpoint(v, &format!("parameter {k}"))?),
                "region" => p.endpoint.region = Some(v.clone()).filter(|r| !r.is_empty()),
                "addressingStyle" => {
                    p.endpoint.addressing =
                        v.parse().map_err(|e: String| CsiError::invalid(format!("parameter addressingStyle: {e}")))?
                }
                "onDelete" => p.on_delete = v.parse()?,
                "mountOptions" => p.mount_options = split_option_list(v),
                "quota" => {
                    p.hard_quota = match v.as_str() {
                        "hard" => true,
                        "none" | "soft" | "" => false,
                        o => return Err(CsiError::invalid(format!("parameter quota={o:?}: expected hard or none"))),
                    }
                }
                "mountPodMemory" => p.server_resources.memory = Some(validate_memory(v, "parameter mountPodMemory")?),
                "mountPodCPU" => p.server_resources.cpu = Some(validate_cpu(v, "parameter mountPodCPU")?),
                "authenticationSource" | "roleArn" | "stsEndpoint" | "oidcProviderArn" => {} // below
                k if k.starts_with("csi.storage.k8s.io/") => {}
                other => {
                    return Err(CsiError::invalid(format!(
                        "unknown StorageClass parameter {other:?} (known: bucket, prefix, endpoint, region, addressingStyle, onDelete, mountOptions, quota, mountPodMemory, mountPodCPU, authenticationSource, roleArn, stsEndpoint, oidcProviderArn)"
                    )))
                }
            }
        }
        MountOptions::parse(&p.mount_options).map_err(|e| CsiError::invalid(format!("parameter mountOptions: {e}")))?;
        if let Some(url) = &p.endpoint.url {
            let (region, addressing) = provider_defaults(url);
            if p.endpoint.region.is_none() {
                p.endpoint.region = region;
            }
            if !params.contains_key("addressingStyle") {
                if let Some(a) = addressing {
                    p.endpoint.addressing = a;
                }
            }
        }
        p.pod_identity = PodIdentity::from_attributes(params, p.endpoint.region(), "parameter")?;
        Ok(p)
    }

    /// A stable digest of everything that shapes the volume, to detect a CreateVolume
    /// repeated with other parameters.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let text = format!(
            "{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{}",
            self.bucket,
            self.base_prefix,
            self.endpoint.url,
            self.endpoint.region,
            self.endpoint.addressing,
            self.on_delete,
            self.mount_options,
            self.hard_quota
        );
        // Volumes created before mount pods and pod identity keep their fingerprint.
        let text = if self.server_resources == ServerResources::default() {
            text
        } else {
            format!("{text}|{:?}", self.server_resources)
        };
        let text = match &self.pod_identity {
            None => text,
            Some(p) => format!("{text}|{p:?}"),
        };
        hex::encode(&Sha256::digest(text.as_bytes())[..16])
    }
}

/// The `subPath` volume attribute: the directory of the volume a publish binds instead of
/// its root (several PVs of one bucket, one mount per node). Checked here for form (a
/// relative path of plain names); the node then opens it without following symlinks.
pub fn sub_path(ctx: &HashMap<String, String>) -> CsiResult<Option<std::path::PathBuf>> {
    let Some(v) = ctx.get("subPath").map(|v| v.trim_end_matches('/')).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = |why: &str| CsiError::invalid(format!("volume attribute subPath={v:?}: {why}"));
    if v.len() > 1024 {
        return Err(bad("longer than 1024 bytes"));
    }
    if v.starts_with('/') {
        return Err(bad("must be relative to the volume's root"));
    }
    for part in v.split('/') {
        match part {
            "" => return Err(bad("has an empty component (//)")),
            "." | ".." => return Err(bad("may not contain . or .. components")),
            p if p.contains('\0') => return Err(bad("contains a NUL byte")),
            _ => {}
        }
    }
    Ok(Some(std::path::PathBuf::from(v)))
}

/// Splits `mountOptions` given as one string: comma- or space-separated.
pub fn split_option_list(v: &str) -> Vec<String> {
    v.split([',', ' ', '\n']).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Checks an S3 bucket name (3-63 chars, lower-case letters, digits, dots, hyphens).
pub fn validate_bucket(name: &str, field: &str) -> CsiResult<String> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends_ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if (3..=63).contains(&name.len()) && ok_chars && ends_ok && !name.contains("..") {
        Ok(name.to_string())
    } else {
        Err(CsiError::invalid(format!(
            "{field}={name:?} is not a valid bucket name (3-63 lower-case letters, digits, dots, hyphens)"
        )))
    }
}

fn validate_prefix(v: &str, field: &str) -> CsiResult<String> {
    if v.contains('|') || v.split('/').any(|s| s == "." || s == "..") {
        return Err(CsiError::invalid(format!("{field}={v:?}: a prefix may not contain '|', '.' or '..' segments")));
    }
    Ok(normalize_prefix(v))
}

/// Turns a PV name into a bucket name for bucket-per-volume provisioning.
pub fn bucket_name_for(pv_name: &str) -> CsiResult<String> {
    let mut s: String = pv_name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' { c } else { '-' })
        .collect();
    s = s.trim_matches('-').to_string();
    if s.len() > 63 {
        use sha2::{Digest, Sha256};
        let h = hex::encode(&Sha256::digest(pv_name.as_bytes())[..4]);
        s = format!("{}-{h}", s[..54].trim_end_matches('-'));
    }
    validate_bucket(&s, "volume name")
}

/// Everything needed to mount a volume on a node, resolved from the volume id, the
/// volume context (dynamic or static PV attributes) and the node secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Bucket.
    pub bucket: String,
    /// Prefix inside it, empty or ending in `/`.
    pub prefix: String,
    /// Store location.
    pub endpoint: Endpoint,
    /// Mount options (typed options, as strings).
    pub mount_options: Vec<String>,
    /// Mounted read-only whatever the pod asks.
    pub read_only: bool,
    /// Capacity reported by statfs (bytes); `None` = a large constant.
    pub capacity: Option<i64>,
    /// Writes past the capacity fail with ENOSPC (`quota: hard`).
    pub hard_quota: bool,
    /// Limits of the volume's mount pod.
    pub server_resources: ServerResources,
    /// Keys from the pod's service account instead of a Secret.
    pub pod_identity: Option<PodIdentity>,
}

/// Attributes holding option strings of the driver a PV was written for: k8s-csi-s3
/// `options`, Alibaba OSS `otherOpts`, Tencent COS `additional_args`.
const FOREIGN_OPTION_ATTRIBUTES: &[&str] = &["otherOpts", "options", "additional_args"];

/// Every volume attribute a PV or StorageClass may carry (ours and other drivers'), so a
/// typo is refused by name instead of ignored.
pub const KNOWN_ATTRIBUTES: &[&str] = &[
    "bucket",
    "prefix",
    "path",
    "endpoint",
    "url",
    "region",
    "addressingStyle",
    "mountOptions",
    "otherOpts",
    "options",
    "additional_args",
    "usePrefix",
    "readOnly",
    "capacity",
    "mounter",
    "quota",
    "mountPodMemory",
    "mountPodCPU",
    "authenticationSource",
    "roleArn",
    "stsEndpoint",
    "oidcProviderArn",
    "subPath",
];

impl VolumeSpec {
    /// Resolves a volume for NodeStage. Static PVs may name the bucket in the volume
    /// handle (`bucket` or `bucket/prefix`, as k8s-csi-s3 does) or in attributes.
    pub fn resolve(volume_id: &str, ctx: &HashMap<String, String>, secret: &SecretValues) -> CsiResult<Self> {
        for k in ctx.keys() {
            if !KNOWN_ATTRIBUTES.contains(&k.as_str())
                && !k.starts_with("csi.storage.k8s.io/")
                && !k.starts_with("storage.kubernetes.io/")
            {
                return Err(CsiError::invalid(format!(
                    "unknown volume attribute {k:?} (known: {})",
                    KNOWN_ATTRIBUTES.join(", ")
                )));
            }
        }
        let id = VolumeId::parse(volume_id);
        let (bucket, prefix) = Self::bucket_and_prefix(volume_id, id.as_ref(), ctx)?;
        let named = ["endpoint", "url"].into_iter().find_map(|k| ctx.get(k).filter(|s| !s.is_empty()).map(|v| (k, v)));
        let url = match named {
            Some((k, u)) => Some(normalize_endpoint(u, &format!("volume attribute {k}"))?),
            None => secret.endpoint.clone().or_else(|| id.as_ref().and_then(|i| i.endpoint.clone())),
        };
        let region = ctx
            .get("region")
            .filter(|s| !s.is_empty())
            .cloned()
            .or_else(|| secret.region.clone())
            .or_else(|| id.as_ref().and_then(|i| i.region.clone()));
        let (implied_region, implied_addressing) = url.as_deref().map(provider_defaults).unwrap_or_default();
        let region = region.or(implied_region);
        let mut addressing = implied_addressing.unwrap_or(AddressingStyle::Path);
        if let Some(a) = ctx.get("addressingStyle") {
            addressing =
                a.parse().map_err(|e: String| CsiError::invalid(format!("volume attribute addressingStyle: {e}")))?;
        }
        let mut mount_options = Vec::new();
        if let Some(m) = ctx.get("mountOptions") {
            mount_options.extend(split_option_list(m));
        }
        let mut ignored = Vec::new();
        for key in FOREIGN_OPTION_ATTRIBUTES {
            if let Some(o) = ctx.get(*key) {
                let t = translate_foreign(o).map_err(|e| CsiError::invalid(format!("volume attribute {key}: {e}")))?;
                mount_options.extend(t.items);
                ignored.extend(t.ignored);
            }
        }
        if !ignored.is_empty() {
            tracing::info!(volume = %volume_id, ignored = %ignored.join(" "), "options of the previous driver that mean nothing to s3vol are ignored");
        }
        MountOptions::parse(&mount_options).map_err(|e| {
            // Name the attributes the options came from, and what they said.
            let from: Vec<&str> = std::iter::once("mountOptions")
                .chain(FOREIGN_OPTION_ATTRIBUTES.iter().copied())
                .filter(|k| ctx.contains_key(*k))
                .collect();
            CsiError::invalid(format!("volume attribute {} = {mount_options:?}: {e}", from.join(", ")))
        })?;
        let read_only = match ctx.get("readOnly").map(String::as_str) {
            None | Some("false") | Some("") => false,
            Some("true") => true,
            Some(o) => {
                return Err(CsiError::invalid(format!("volume attribute readOnly={o:?}: expected true or false")))
            }
        };
        let capacity = match ctx.get("capacity") {
            None => None,
            Some(c) => Some(
                parse_capacity(c)
                    .ok_or_else(|| CsiError::invalid(format!("volume attribute capacity={c:?} is not a size")))?,
            ),
        };
        let hard_quota = match ctx.get("quota").map(String::as_str) {
            None | Some("") | Some("none") => false,
            Some("hard") if capacity.is_some() => true,
            Some("hard") => return Err(CsiError::invalid("volume attribute quota=hard needs a capacity attribute")),
            Some(o) => return Err(CsiError::invalid(format!("volume attribute quota={o:?}: expected hard or none"))),
        };
        let server_resources = ServerResources {
            memory: ctx
                .get("mountPodMemory")
                .map(|v| validate_memory(v, "volume attribute mountPodMemory"))
                .transpose()?,
            cpu: ctx.get("mountPodCPU").map(|v| validate_cpu(v, "volume attribute mountPodCPU")).transpose()?,
        };
        let pod_identity =
            PodIdentity::from_attributes(ctx, region.as_deref().unwrap_or("us-east-1"), "volume attribute")?;
        if let Some(m) = ctx.get("mounter") {
            tracing::info!(mounter = %m, "volume attribute mounter is ignored: s3vol always mounts with its own filesystem");
        }
        Ok(VolumeSpec {
            bucket,
            prefix,
            endpoint: Endpoint { url, region, addressing },
            mount_options,
            read_only,
            capacity,
            hard_quota,
            server_resources,
            pod_identity,
        })
    }

    /// Where the volume's data is. A handle that names a bucket (our own ids, and
    /// k8s-csi-s3's `bucket/prefix` handles) is authoritative: attributes may repeat it but
    /// never widen it, so a PV whose attributes were copied from a shared-bucket
    /// StorageClass never mounts the whole bucket. A handle that is only a name (the
    /// Alibaba OSS driver's static PVs) takes bucket and path from the attributes.
    fn bucket_and_prefix(
        volume_id: &str,
        id: Option<&VolumeId>,
        ctx: &HashMap<String, String>,
    ) -> CsiResult<(String, String)> {
        let attr_bucket = ctx.get("bucket").filter(|b| !b.is_empty());
        let attr_prefix =
            match ctx.get("prefix").map(|p| ("prefix", p)).or_else(|| ctx.get("path").map(|p| ("path", p))) {
                Some((name, p)) => Some(validate_prefix(p, &format!("volume attribute {name}"))?),
                None => None,
            };
        let from_handle = match id {
            Some(id) => Some((id.bucket.clone(), id.prefix.clone())),
            None => match volume_id.split_once('/') {
                Some((b, p)) => Some((b.to_string(), validate_prefix(p, "volume handle prefix")?)),
                None => None,
            },
        };
        let (bucket, prefix) = match from_handle {
            Some((bucket, prefix)) => {
                if let Some(b) = attr_bucket.filter(|b| **b != bucket) {
                    return Err(CsiError::invalid(format!(
                        "volume handle {volume_id:?} names bucket {bucket:?} but volume attribute bucket={b:?}; they must agree"
                    )));
                }
                match attr_prefix {
                    Some(p) if !prefix.is_empty() && !p.is_empty() && p != prefix => {
                        return Err(CsiError::invalid(format!(
                            "volume handle {volume_id:?} names prefix {prefix:?} but the prefix attribute says {p:?}; they must agree"
                        )))
                    }
                    // Only a handle without a prefix (a whole-bucket volume) may be narrowed.
                    Some(p) if prefix.is_empty() => (bucket, p),
                    _ => (bucket, prefix),
                }
            }
            None => match attr_bucket {
                Some(b) => (b.clone(), attr_prefix.unwrap_or_default()),
                None => (volume_id.to_string(), attr_prefix.unwrap_or_default()),
            },
        };
        Ok((validate_bucket(&bucket, "bucket (volume attribute or volume handle)")?, prefix))
    }

    /// The attributes a dynamic volume carries in its volume context.
    pub fn to_context(&self) -> HashMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("bucket".to_string(), self.bucket.clone());
        m.insert("prefix".to_string(), self.prefix.clone());
        if let Some(u) = &self.endpoint.url {
            m.insert("endpoint".into(), u.clone());
        }
        if let Some(r) = &self.endpoint.region {
            m.insert("region".into(), r.clone());
        }
        if self.endpoint.addressing == AddressingStyle::Virtual {
            m.insert("addressingStyle".into(), self.endpoint.addressing.as_str().into());
        }
        if !self.mount_options.is_empty() {
            m.insert("mountOptions".into(), self.mount_options.join(","));
        }
        if let Some(c) = self.capacity {
            m.insert("capacity".into(), c.to_string());
        }
        if self.hard_quota {
            m.insert("quota".into(), "hard".into());
        }
        if let Some(v) = &self.server_resources.memory {
            m.insert("mountPodMemory".into(), v.clone());
        }
        if let Some(v) = &self.server_resources.cpu {
            m.insert("mountPodCPU".into(), v.clone());
        }
        if let Some(p) = &self.pod_identity {
            m.insert("authenticationSource".into(), "pod".into());
            m.insert("roleArn".into(), p.role_arn.clone());
            if let Some(e) = &p.sts_endpoint {
                m.insert("stsEndpoint".into(), e.clone());
            }
            if let Some(o) = &p.oidc_provider_arn {
                m.insert("oidcProviderArn".into(), o.clone());
            }
        }
        m.into_iter().collect()
    }
}

/// Checks a memory quantity for a mount pod (`512Mi`, `1Gi`, `1073741824`).
fn validate_memory(v: &str, field: &str) -> CsiResult<String> {
    match parse_capacity(v) {
        Some(n) if n >= 32 << 20 => Ok(v.trim().to_string()),
        Some(_) => Err(CsiError::invalid(format!("{field}={v:?} is below 32Mi, too little for a FUSE server"))),
        None => Err(CsiError::invalid(format!("{field}={v:?} is not a memory quantity such as 512Mi"))),
    }
}

/// Checks a CPU quantity for a mount pod (`250m`, `1`, `0.5`).
fn validate_cpu(v: &str, field: &str) -> CsiResult<String> {
    let t = v.trim();
    let num = t.strip_suffix('m').unwrap_or(t);
    let ok = !num.is_empty()
        && num.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && num.bytes().filter(|b| *b == b'.').count() <= 1
        && !(t.ends_with('m') && num.contains('.'))
        && num.parse::<f64>().is_ok_and(|n| n > 0.0);
    if ok {
        Ok(t.to_string())
    } else {
        Err(CsiError::invalid(format!("{field}={v:?} is not a CPU quantity such as 250m or 1")))
    }
}

/// Parses `1073741824`, `10Gi`, `500M`, `2G`.
pub fn parse_capacity(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let mult: i64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn volume_id_round_trips_and_fits() {
        let id = VolumeId {
            bucket: "shared".into(),
            prefix: "vols/pvc-1/".into(),
            region: Some("eu-west-1".into()),
            endpoint: Some("https://s3.example.com".into()),
            addressing: AddressingStyle::Path,
        };
        let s = id.encode().unwrap();
        assert_eq!(s, "v1|shared|vols/pvc-1/|eu-west-1|s3.example.com");
        assert_eq!(VolumeId::parse(&s).unwrap(), id);
        // Virtual-hosted on an endpoint that does not imply it is recorded (v2); OSS and
        // COS endpoints imply it, so their v1 ids (made before v2 existed) still mean it.
        let virt = VolumeId { addressing: AddressingStyle::Virtual, ..id.clone() };
        let s = virt.encode().unwrap();
        assert_eq!(s, "v2|shared|vols/pvc-1/|eu-west-1|s3.example.com|virtual");
        assert_eq!(VolumeId::parse(&s).unwrap(), virt);
        let oss = VolumeId::parse("v1|b|p/|cn-hangzhou|oss-cn-hangzhou.aliyuncs.com").unwrap();
        assert_eq!(oss.addressing, AddressingStyle::Virtual);
        assert_eq!(oss.encode().unwrap(), "v1|b|p/|cn-hangzhou|oss-cn-hangzhou.aliyuncs.com");
        let cos_path = VolumeId { addressing: AddressingStyle::Path, ..oss };
        assert!(cos_path.encode().unwrap().ends_with("|path"));
        assert!(VolumeId::parse("v2|b|p/|r|s3.example.com|path").is_none(), "v2 only where v1 cannot say it");
        assert!(VolumeId::parse("v2|b|p/|r|s3.example.com|sideways").is_none());
        let long = VolumeId { endpoint: Some(format!("http://{}.example.com:9000", "x".repeat(80))), ..id.clone() };
        let e = long.encode().unwrap_err();
        assert!(matches!(&e, CsiError::InvalidArgument(m) if m.contains("xxxx.example.com")), "never dropped: {e}");
        assert!(VolumeId::parse("bucket/prefix").is_none());
        assert!(VolumeId::parse("v1|b|noslash|r|e").is_none());
    }

    #[test]
    fn unknown_parameter_is_named() {
        let e = ProvisionParams::parse(&map(&[("bukket", "x")])).unwrap_err();
        assert!(matches!(&e, CsiError::InvalidArgument(m) if m.contains("bukket")), "{e}");
        let e = ProvisionParams::parse(&map(&[("onDelete", "shred")])).unwrap_err();
        assert!(e.to_string().contains("shred"));
        let e = ProvisionParams::parse(&map(&[("mountOptions", "uid=1000,frobnicate")])).unwrap_err();
        assert!(e.to_string().contains("frobnicate"), "{e}");
        assert!(ProvisionParams::parse(&map(&[("csi.storage.k8s.io/pv/name", "x")])).is_ok());
    }

    #[test]
    fn secrets_accept_aliases_and_never_print_values() {
        let s = SecretValues::from_map(&map(&[("akId", "AKIDVALUE"), ("akSecret", "SECRETVALUE")])).unwrap();
        assert_eq!(s.credentials.as_ref().unwrap().access_key_id, "AKIDVALUE");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("SECRETVALUE") && !dbg.contains("AKIDVALUE"), "{dbg}");
        let e = SecretValues::from_map(&map(&[("accessKeyID", "A")])).unwrap_err();
        assert!(e.to_string().contains("secretAccessKey"));
        // Temporary keys: the session token travels with them (k8s-csi-s3 and OSS names).
        for token in ["sessionToken", "securityToken"] {
            let s =
                SecretValues::from_map(&map(&[("accessKeyID", "A"), ("secretAccessKey", "S"), (token, "T")])).unwrap();
            assert_eq!(s.credentials.unwrap().session_token.as_deref(), Some("T"), "{token}");
        }
    }

    #[test]
    fn mount_pod_resources_are_checked_quantities() {
        let p = ProvisionParams::parse(&map(&[("mountPodMemory", "512Mi"), ("mountPodCPU", "250m")])).unwrap();
        assert_eq!(p.server_resources.memory.as_deref(), Some("512Mi"));
        assert_eq!(p.server_resources.cpu.as_deref(), Some("250m"));
        for (k, v, says) in [
            ("mountPodMemory", "lots", "memory quantity"),
            ("mountPodMemory", "16Mi", "below 32Mi"),
            ("mountPodCPU", "fast", "CPU quantity"),
            ("mountPodCPU", "0.5m", "CPU quantity"),
        ] {
            let e = ProvisionParams::parse(&map(&[(k, v)])).unwrap_err();
            assert!(e.to_string().contains(v) && e.to_string().contains(says), "{k}={v}: {e}");
        }
        // Volumes made before these parameters existed keep their fingerprint.
        let plain = ProvisionParams::parse(&map(&[("bucket", "bkt")])).unwrap();
        let sized = ProvisionParams::parse(&map(&[("bucket", "bkt"), ("mountPodMemory", "1Gi")])).unwrap();
        assert_eq!(plain.fingerprint(), "c1c4e1df3def4836e053a7791c798283", "as computed before mount pods existed");
        assert_ne!(plain.fingerprint(), sized.fingerprint());
        let spec = VolumeSpec::resolve("bkt/p", &map(&[("mountPodCPU", "1")]), &SecretValues::default()).unwrap();
        assert_eq!(spec.server_resources.cpu.as_deref(), Some("1"));
    }

    #[test]
    fn oss_static_pv_resolves() {
        let ctx = map(&[
            ("bucket", "my-bucket"),
            ("url", "oss-cn-hangzhou.aliyuncs.com"),
            ("path", "/"),
            ("otherOpts", "-o max_stat_cache_size=0 -o allow_other"),
        ]);
        let v = VolumeSpec::resolve("pv-oss", &ctx, &SecretValues::default()).unwrap();
        assert_eq!(v.bucket, "my-bucket");
        assert_eq!(v.prefix, "");
        assert_eq!(v.endpoint.url.as_deref(), Some("https://oss-cn-hangzhou.aliyuncs.com"));
        assert_eq!(v.mount_options, vec!["max_stat_cache_size=0", "allow_other"]);
    }

    /// A PV provisioned by k8s-csi-s3 from its chart's StorageClass with a shared bucket:
    /// the handle is `bucket/pvc-...` and the StorageClass parameters (bucket, mounter,
    /// options) are copied into the volume attributes.
    fn k8s_csi_s3_shared_bucket_pv() -> (&'static str, HashMap<String, String>) {
        (
            "shared-bucket/pvc-9b7d2c1e-53a0-4f0e-b1d4-0d2f5c1a7e11",
            map(&[
                ("bucket", "shared-bucket"),
                ("mounter", "geesefs"),
                ("options", "--memory-limit 1000 --dir-mode 0777 --file-mode 0666"),
                ("storage.kubernetes.io/csiProvisionerIdentity", "1700000000000-8081-ru.yandex.s3.csi"),
            ]),
        )
    }

    #[test]
    fn k8s_csi_s3_shared_bucket_pv_mounts_only_its_prefix() {
        let (handle, ctx) = k8s_csi_s3_shared_bucket_pv();
        let secret = SecretValues { endpoint: Some("http://minio:9000".into()), ..Default::default() };
        let v = VolumeSpec::resolve(handle, &ctx, &secret).unwrap();
        assert_eq!(v.bucket, "shared-bucket");
        assert_eq!(v.prefix, "pvc-9b7d2c1e-53a0-4f0e-b1d4-0d2f5c1a7e11/", "the handle's prefix must win over `bucket`");
        assert_eq!(v.endpoint.url.as_deref(), Some("http://minio:9000"));
        // The chart's default geesefs options mount: modes mapped, memory limit ignored.
        let o = MountOptions::parse(&v.mount_options).unwrap();
        assert_eq!((o.dir_mode, o.file_mode), (0o777, 0o666));
    }

    #[test]
    fn attributes_never_widen_a_handle() {
        let (handle, mut ctx) = k8s_csi_s3_shared_bucket_pv();
        ctx.insert("bucket".into(), "other-bucket".into());
        let e = VolumeSpec::resolve(handle, &ctx, &SecretValues::default()).unwrap_err();
        assert!(matches!(&e, CsiError::InvalidArgument(m) if m.contains("other-bucket")), "{e}");
        let (handle, mut ctx) = k8s_csi_s3_shared_bucket_pv();
        ctx.insert("prefix".into(), "/".into());
        let v = VolumeSpec::resolve(handle, &ctx, &SecretValues::default()).unwrap();
        assert_eq!(
            v.prefix, "pvc-9b7d2c1e-53a0-4f0e-b1d4-0d2f5c1a7e11/",
            "an empty prefix attribute is not the bucket root"
        );
        let (handle, mut ctx) = k8s_csi_s3_shared_bucket_pv();
        ctx.insert("path".into(), "another-volume".into());
        let e = VolumeSpec::resolve(handle, &ctx, &SecretValues::default()).unwrap_err();
        assert!(e.to_string().contains("another-volume"), "{e}");
        // Our own ids are authoritative the same way.
        let id = VolumeId {
            bucket: "bucket-one".into(),
            prefix: "vols/pvc-1/".into(),
            region: None,
            endpoint: None,
            addressing: AddressingStyle::Path,
        };
        let id = id.encode().unwrap();
        let e = VolumeSpec::resolve(&id, &map(&[("bucket", "bucket-two"), ("prefix", "")]), &SecretValues::default())
            .unwrap_err();
        assert!(e.to_string().contains("must agree"), "{e}");
        let ctx = map(&[("bucket", "bucket-one"), ("prefix", "")]);
        let v = VolumeSpec::resolve(&id, &ctx, &SecretValues::default()).unwrap();
        assert_eq!((v.bucket.as_str(), v.prefix.as_str()), ("bucket-one", "vols/pvc-1/"));
    }

    #[test]
    fn k8s_csi_s3_static_pvs_use_the_volume_handle() {
        // README's static PV: the handle names bucket and path.
        let ctx = map(&[
            ("capacity", "10Gi"),
            ("mounter", "geesefs"),
            ("options", "--memory-limit 1000 --dir-mode 0777 --file-mode 0666"),
        ]);
        let v = VolumeSpec::resolve("manualbucket/path", &ctx, &SecretValues::default()).unwrap();
        assert_eq!((v.bucket.as_str(), v.prefix.as_str()), ("manualbucket", "path/"));
        // A whole-bucket handle.
        let v = VolumeSpec::resolve("manualbucket", &map(&[("mounter", "s3fs")]), &SecretValues::default()).unwrap();
        assert_eq!((v.bucket.as_str(), v.prefix.as_str()), ("manualbucket", ""));
        // Location options are refused, not silently ignored.
        let ctx = map(&[("options", "--endpoint http://elsewhere:9000")]);
        let e = VolumeSpec::resolve("manualbucket/path", &ctx, &SecretValues::default()).unwrap_err();
        assert!(matches!(&e, CsiError::InvalidArgument(m) if m.contains("--endpoint")), "{e}");
    }

    #[test]
    fn oss_and_cos_endpoints_imply_region_and_virtual_hosting() {
        for (url, region) in [
            ("https://oss-cn-hangzhou.aliyuncs.com", Some("cn-hangzhou")),
            ("https://oss-cn-beijing-internal.aliyuncs.com", Some("cn-beijing")),
            ("http://oss-ap-southeast-1.aliyuncs.com:80", Some("ap-southeast-1")),
            ("https://oss-accelerate.aliyuncs.com", None),
            ("https://cos.ap-guangzhou.myqcloud.com", Some("ap-guangzhou")),
        ] {
            assert_eq!(provider_defaults(url), (region.map(str::to_string), Some(AddressingStyle::Virtual)), "{url}");
        }
        assert_eq!(provider_defaults("http://minio:9000"), (None, None));
        // The OSS driver's static PV: url without scheme, no region, no addressing.
        let ctx = map(&[("bucket", "oss-bucket"), ("url", "oss-cn-hangzhou-internal.aliyuncs.com"), ("path", "/data")]);
        let v = VolumeSpec::resolve("pv-oss", &ctx, &SecretValues::default()).unwrap();
        assert_eq!(v.endpoint.region.as_deref(), Some("cn-hangzhou"));
        assert_eq!(v.endpoint.addressing, AddressingStyle::Virtual);
        // Explicit attributes still win.
        let ctx = map(&[
            ("bucket", "b-b"),
            ("url", "oss-cn-hangzhou.aliyuncs.com"),
            ("addressingStyle", "path"),
            ("region", "x"),
        ]);
        let v = VolumeSpec::resolve("pv", &ctx, &SecretValues::default()).unwrap();
        assert_eq!((v.endpoint.region.as_deref(), v.endpoint.addressing), (Some("x"), AddressingStyle::Path));
        let p = ProvisionParams::parse(&map(&[("endpoint", "https://cos.ap-beijing.myqcloud.com"), ("bucket", "b-1")]))
            .unwrap();
        assert_eq!(
            (p.endpoint.region.as_deref(), p.endpoint.addressing),
            (Some("ap-beijing"), AddressingStyle::Virtual)
        );
    }

    /// The Tencent COS driver's static PV and secret: url/bucket/path/additional_args,
    /// keys SecretId/SecretKey.
    #[test]
    fn cos_static_pv_resolves() {
        let ctx = map(&[
            ("url", "http://cos.ap-guangzhou.myqcloud.com"),
            ("bucket", "data-1250000000"),
            ("path", "/team/a"),
            ("additional_args", "-oensure_diskfree=20000 -oallow_other -odbglevel=info"),
        ]);
        let secret = SecretValues::from_map(&map(&[("SecretId", "AKIDcos"), ("SecretKey", "cos-secret")])).unwrap();
        let v = VolumeSpec::resolve("pv-cos", &ctx, &secret).unwrap();
        assert_eq!((v.bucket.as_str(), v.prefix.as_str()), ("data-1250000000", "team/a/"));
        assert_eq!(v.endpoint.region.as_deref(), Some("ap-guangzhou"));
        assert_eq!(v.endpoint.addressing, AddressingStyle::Virtual);
        assert_eq!(v.mount_options, vec!["allow_other"], "cosfs tuning options ignored, allow_other mapped");
        assert_eq!(secret.credentials.unwrap().access_key_id, "AKIDcos");
    }

    /// k8s-csi-s3 with `usePrefix` and a `prefix` parameter: the handle carries the prefix.
    #[test]
    fn k8s_csi_s3_use_prefix_pv_resolves() {
        let ctx =
            map(&[("bucket", "shared-bucket"), ("usePrefix", "true"), ("prefix", "team-a"), ("mounter", "geesefs")]);
        let v = VolumeSpec::resolve("shared-bucket/team-a", &ctx, &SecretValues::default()).unwrap();
        assert_eq!((v.bucket.as_str(), v.prefix.as_str()), ("shared-bucket", "team-a/"));
    }

    #[test]
    fn bucket_names_from_pv_names() {
        assert_eq!(bucket_name_for("pvc-1234_ABC").unwrap(), "pvc-1234-abc");
        let long = bucket_name_for(&"p".repeat(100)).unwrap();
        assert!(long.len() <= 63);
        assert!(validate_bucket("Bad_Name", "bucket").is_err());
    }

    #[test]
    fn capacities_parse() {
        assert_eq!(parse_capacity("10Gi"), Some(10 << 30));
        assert_eq!(parse_capacity("5"), Some(5));
        assert_eq!(parse_capacity("x"), None);
    }
}
