//! `s3vol`: the one binary. Subcommands: `csi` (the driver), `mount` (a standalone
//! FUSE mount of a bucket or a local directory), `check` (why a mount would fail),
//! `version`, and the internal
//! `fuse-server` the node plugin starts per volume.

mod check;
mod cli;
mod csi_cmd;
mod fuse_server;
mod logging;
mod metrics;
mod mount_cmd;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    logging::init(&cli.log_format, cli.command.debug());
    let result = match cli.command {
        cli::Command::Csi(args) => csi_cmd::run(args),
        cli::Command::Mount(args) => mount_cmd::run(args),
        cli::Command::Check(args) => check::run(args),
        cli::Command::FuseServer(args) => fuse_server::run(args),
        cli::Command::Version => {
            println!("{}", cli::version_text());
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line for the user; details are in the log above it.
            eprintln!("s3vol: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
