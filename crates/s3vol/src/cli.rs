use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Command line of the `s3vol` binary.
#[derive(Parser, Debug)]
#[command(name = "s3vol", version = env!("CARGO_PKG_VERSION"), about = "Kubernetes volumes and FUSE mounts on S3-compatible object storage")]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the CSI driver (controller, node, or both) on a unix socket.
    Csi(CsiArgs),
    /// Mount a bucket/prefix (s3://BUCKET[/PREFIX]) or a local directory (file:///DIR).
    Mount(MountArgs),
    /// Diagnose why a mount would fail: DNS, connection, TLS, clock, credentials, bucket,
    /// listing, writes, multipart and copy, one line each with the fix. Exit 0 only when a
    /// mount would work.
    Check(CheckArgs),
    /// Print version and build information.
    Version,
    /// Internal: the per-volume FUSE server started by the node plugin.
    #[command(hide = true)]
    FuseServer(crate::fuse_server::FuseServerArgs),
}

impl Command {
    /// Whether verbose logging was asked for on the command itself.
    pub fn debug(&self) -> bool {
        match self {
            Command::Mount(m) => m.options.iter().any(|o| o.split(',').any(|x| x == "debug" || x == "debug=on")),
            _ => false,
        }
    }
}

/// Which CSI services this process serves.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Identity + Controller (the Deployment).
    Controller,
    /// Identity + Node (the DaemonSet).
    Node,
    /// Everything, for testing on one machine.
    All,
}

/// `s3vol csi` flags.
#[derive(Args, Debug)]
pub struct CsiArgs {
    /// gRPC endpoint, `unix:///path/csi.sock`.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// Services to serve.
    #[arg(long, value_enum, default_value = "all")]
    pub mode: Mode,
    /// This node's id (NodeGetInfo); defaults to the host name.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// Driver name registered with kubelet.
    #[arg(long, default_value = s3vol_csi::DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// Node state (mount registry); a 0700 directory.
    #[arg(long, default_value = "/var/lib/s3vol")]
    pub state_dir: PathBuf,
    /// Store endpoint when neither the StorageClass nor the secret names one
    /// (`https://...`, `http://...`, or `file:///dir` for a local directory).
    #[arg(long, env = "S3VOL_DEFAULT_ENDPOINT")]
    pub default_endpoint: Option<String>,
    /// The only directory `file://` stores may be at or below (a volume naming any other
    /// `file://` path is refused); unset: no volume may use a `file://` store.
    #[arg(long, env = "S3VOL_FILE_STORE_ROOT")]
    pub file_store_root: Option<PathBuf>,
    /// An endpoint inline volumes may name besides `--default-endpoint`, or an `http://`
    /// STS endpoint allowed to receive pods' tokens in clear (repeat, or comma-separate).
    #[arg(long = "allow-endpoint", env = "S3VOL_ALLOW_ENDPOINTS", value_delimiter = ',')]
    pub allow_endpoints: Vec<String>,
    /// Region when neither the StorageClass nor the secret names one.
    #[arg(long, env = "S3VOL_DEFAULT_REGION")]
    pub default_region: Option<String>,
    /// A tmpfs directory where the node keeps volume credentials, so it can repair
    /// mounts after its own restart; ignored (with a warning) if not a tmpfs.
    #[arg(long, default_value = "/run/s3vol")]
    pub secrets_dir: PathBuf,
    /// Seconds between node health checks (dead FUSE servers are replaced).
    #[arg(long, default_value = "5")]
    pub health_interval: f64,
    /// What a node plugin started from a new binary does with FUSE servers that run the
    /// old one: `rolling` hands each volume over to a new server, one at a time, with no
    /// failed operation; `never` leaves them until their volumes are unstaged.
    #[arg(long, value_enum, default_value = "rolling")]
    pub upgrade_servers: UpgradeServersArg,
    /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9810).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where FUSE servers run: `pods` (one unprivileged mount pod per volume, through the
    /// Kubernetes API: restarts of the plugin's container touch no server) or `processes`
    /// (children of the plugin, in its container).
    #[arg(long, value_enum, env = "S3VOL_SERVERS", default_value = "processes")]
    pub servers: ServersArg,
    /// Namespace for mount pods (the plugin's own; from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "s3vol")]
    pub namespace: String,
    /// The plugin's own pod, whose image the mount pods use.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Image for mount pods instead of the plugin pod's own.
    #[arg(long, env = "S3VOL_MOUNT_POD_IMAGE")]
    pub mount_pod_image: Option<String>,
}

/// `--servers` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServersArg {
    /// Child processes of the node plugin.
    Processes,
    /// One mount pod per volume.
    Pods,
}

/// `s3vol version` output: version, commit, build profile and target.
pub fn version_text() -> String {
    format!(
        "s3vol {}\ncommit: {}\nbuilt: {} ({})\narch: {}",
        env!("CARGO_PKG_VERSION"),
        env!("S3VOL_GIT_COMMIT"),
        env!("S3VOL_BUILD_DATE"),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        std::env::consts::ARCH,
    )
}

/// `s3vol mount` arguments. Credentials come from the standard AWS chain
/// (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, profile, web identity),
/// never from the command line.
#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// What to mount: `s3://BUCKET[/PREFIX]` or `file:///DIR`.
    pub source: String,
    /// Where to mount it (an existing directory).
    pub mountpoint: PathBuf,
    /// S3 endpoint URL (default: AWS for the region).
    #[arg(long, env = "S3VOL_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Signing region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Bucket addressing: path or virtual.
    #[arg(long, default_value = "path")]
    pub addressing_style: String,
    /// Mount options, `-o uid=1000,gid=1000 -o allow_other` (see docs/CONFIGURATION.md).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Capacity statfs reports, bytes (default 1 PiB).
    #[arg(long)]
    pub capacity: Option<u64>,
    /// Refuse writes past --capacity with ENOSPC (usage is measured at mount).
    #[arg(long, requires = "capacity")]
    pub hard_quota: bool,
    /// Stay in the foreground instead of returning once the mount is ready.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Where the mount writes its log and anything else it prints to stderr (default: a
    /// background mount logs nowhere, a foreground one to stderr).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9811).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// `--upgrade-servers` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeServersArg {
    /// Hand every volume to a server of the new binary, one at a time.
    Rolling,
    /// Leave running servers alone.
    Never,
}

/// `s3vol check` arguments: the same source, endpoint and credentials as `s3vol mount`,
/// or a CSI volume (its volume id, attributes and node secret).
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// What a mount would use: `s3://BUCKET[/PREFIX]` or `file:///DIR` (not with --volume-id).
    #[arg(required_unless_present = "volume_id", conflicts_with = "volume_id")]
    pub source: Option<String>,
    /// S3 endpoint URL (default: AWS for the region).
    #[arg(long, env = "S3VOL_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Signing region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Bucket addressing: path or virtual.
    #[arg(long, default_value = "path")]
    pub addressing_style: String,
    /// Mount options, as for `s3vol mount` (checked for syntax; `ro` implies --read-only).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Skip the steps that write (a probe object, a multipart upload, a copy): for
    /// read-only volumes and credentials that may only read.
    #[arg(long)]
    pub read_only: bool,
    /// A CSI volume id (a PV's volumeHandle), checked as the node would mount it.
    #[arg(long)]
    pub volume_id: Option<String>,
    /// The volume's attributes (a PV's volumeAttributes / StorageClass parameters),
    /// `KEY=VALUE`, repeated.
    #[arg(long = "attribute", value_name = "KEY=VALUE", requires = "volume_id")]
    pub attributes: Vec<String>,
    /// The volume's node secret: `kubectl get secret NAME -o json` output, or
    /// `KEY=VALUE` lines. Without it, keys come from the environment as for `s3vol mount`.
    #[arg(long, requires = "volume_id")]
    pub secret_file: Option<PathBuf>,
}
