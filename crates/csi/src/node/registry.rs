//! What is staged and published on this node, kept under the state dir (0700) so a
//! restarted node plugin can re-adopt running FUSE servers. Records hold no secrets;
//! credentials are kept only on a tmpfs (`--secrets-dir`) when one is available.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::handoff::{ServeConfig, WireCredentials};

/// One published target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    /// Bind-mount target.
    pub path: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
    /// The directory of the volume bound there (`subPath`); `None` = its root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<PathBuf>,
}

/// One staged volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// CSI volume id.
    pub volume_id: String,
    /// Staging path (the FUSE mount).
    pub staging_path: PathBuf,
    /// Fingerprint of what was staged, to tell an identical stage from a conflicting one.
    pub fingerprint: String,
    /// Server configuration without credentials.
    pub config: ServeConfig,
    /// Published targets.
    pub targets: Vec<TargetRecord>,
    /// FUSE server process id.
    pub pid: u32,
    /// Staged with keys from a Secret (not the default credential chain): a server
    /// started without them cannot work.
    #[serde(default)]
    pub static_credentials: bool,
    /// Staged without keys: recorded, not mounted; the first publish mounts it with its
    /// own secret (the Alibaba OSS driver's PVs carry keys only in nodePublishSecretRef).
    #[serde(default)]
    pub deferred: bool,
    /// Limits for the volume's server (enforced by mount pods).
    #[serde(default)]
    pub resources: super::launcher::ServerResources,
    /// Keys come from the pods' service-account tokens (`authenticationSource: pod`).
    #[serde(default)]
    pub pod_identity: Option<crate::pod_identity::PodIdentity>,
    /// The service account (`namespace/name`) the volume is mounted for on this node.
    #[serde(default)]
    pub identity_subject: Option<String>,
    /// A CSI ephemeral (inline) volume: staged by its publish, unstaged by its unpublish.
    #[serde(default)]
    pub ephemeral: bool,
    /// The fsGroup the mount's files belong to (the pod's `volume_mount_group`).
    #[serde(default)]
    pub fs_group: Option<String>,
    /// A second mount of volume `view_of` for pods of another fsGroup on this node:
    /// made by a publish, ended with the last unpublish of that group.
    #[serde(default)]
    pub view_of: Option<String>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
    secrets: Option<PathBuf>,
}

fn is_tmpfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC).unwrap_or(false)
}

impl Registry {
    /// Opens (creating, mode 0700) the state dir. Credentials are persisted under
    /// `secrets_dir` only when it is a tmpfs.
    pub fn open(root: &Path, secrets_dir: Option<&Path>) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(root.join("volumes"))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        let secrets = match secrets_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
                if is_tmpfs(d) {
                    Some(d.to_path_buf())
                } else {
                    tracing::warn!(dir = %d.display(), "secrets dir is not a tmpfs: credentials are kept in memory only, so a restarted plugin repairs mounts with the default credential chain");
                    None
                }
            }
            None => None,
        };
        Ok(Registry { root: root.to_path_buf(), secrets })
    }

    /// The per-volume directory name: a hash of the volume id (ids may hold `/`).
    pub fn key(volume_id: &str) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(volume_id.as_bytes())[..10])
    }

    /// The per-volume directory.
    pub fn dir(&self, volume_id: &str) -> PathBuf {
        self.root.join("volumes").join(Self::key(volume_id))
    }

    /// Saves a record (atomically).
    pub fn save(&self, rec: &VolumeRecord) -> std::io::Result<()> {
        let dir = self.dir(&rec.volume_id);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("record.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(rec)?)?;
        std::fs::rename(tmp, dir.join("record.json"))
    }

    /// Loads a record.
    pub fn load(&self, volume_id: &str) -> Option<VolumeRecord> {
        let bytes = std::fs::read(self.dir(volume_id).join("record.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every record.
    pub fn all(&self) -> Vec<VolumeRecord> {
        let Ok(rd) = std::fs::read_dir(self.root.join("volumes")) else { return Vec::new() };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read(e.path().join("record.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// Forgets a volume (and its persisted credentials).
    pub fn remove(&self, volume_id: &str) {
        let _ = std::fs::remove_dir_all(self.dir(volume_id));
        if let Some(s) = &self.secrets {
            let _ = std::fs::remove_file(s.join(Self::key(volume_id)));
        }
    }

    /// Keeps credentials for repairs after a restart (tmpfs only, mode 0600).
    pub fn save_credentials(&self, volume_id: &str, creds: Option<&WireCredentials>) {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(dir) = &self.secrets else { return };
        let path = dir.join(Self::key(volume_id));
        match creds {
            None => {
                let _ = std::fs::remove_file(path);
            }
            Some(c) => {
                // Written aside and renamed: a crash mid-write never leaves torn keys.
                let tmp = path.with_extension("tmp");
                let res = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, &serde_json::to_vec(c).unwrap_or_default()))
                    .and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(e) = res {
                    tracing::warn!(error = %e, "could not keep credentials for repair");
                }
            }
        }
    }

    /// Credentials kept by [`Registry::save_credentials`].
    pub fn load_credentials(&self, volume_id: &str) -> Option<WireCredentials> {
        let dir = self.secrets.as_ref()?;
        serde_json::from_slice(&std::fs::read(dir.join(Self::key(volume_id))).ok()?).ok()
    }
}
