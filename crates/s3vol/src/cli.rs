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
    /// Print version and build information.
    Version,
}

impl Command {
    /// Whether verbose logging was asked for on the command itself.
    pub fn debug(&self) -> bool {
        false
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
    /// Region when neither the StorageClass nor the secret names one.
    #[arg(long, env = "S3VOL_DEFAULT_REGION")]
    pub default_region: Option<String>,
}

/// `s3vol version` output: version, commit, build profile and target.
pub fn version_text() -> String {
    format!(
        "s3vol {}\ncommit: {}\nbuilt: {} ({})\nrustc target: {}",
        env!("CARGO_PKG_VERSION"),
        option_env!("S3VOL_GIT_COMMIT").unwrap_or("unknown"),
        option_env!("S3VOL_BUILD_DATE").unwrap_or("unknown"),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        std::env::consts::ARCH,
    )
}
