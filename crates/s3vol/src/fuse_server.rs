//! `s3vol fuse-server`: the per-volume FUSE server the CSI node plugin starts (the
//! server itself is the `s3vol-server` crate). Here: its arguments, and the metrics
//! recorder the node plugin reads over the control socket.

use std::path::PathBuf;

/// `s3vol fuse-server` arguments.
#[derive(clap::Args, Debug)]
pub struct FuseServerArgs {
    /// Control socket to listen on.
    #[arg(long)]
    pub control: PathBuf,
}

/// Runs the server until its session ends or it is told to shut down.
pub fn run(args: FuseServerArgs) -> anyhow::Result<()> {
    // The store's request counters, read by the node plugin over the control socket.
    let metrics = crate::metrics::builder().install_recorder().ok().map(|h| {
        Box::new(move || {
            h.run_upkeep();
            h.render()
        }) as s3vol_server::MetricsRender
    });
    Ok(s3vol_server::run(&args.control, metrics)?)
}
