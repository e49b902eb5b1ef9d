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

/// Buffers of this size and up (part buffers, prefetched chunks) get pages of their own
/// from the kernel and give them back when freed. glibc otherwise raises the threshold
/// after the first such free and carves later buffers from its arenas, which keep freed
/// memory: the process's RSS then exceeds the memory budget it keeps (seen: 856 MiB for a
/// 512 MiB budget in bench/memory.sh).
const MMAP_THRESHOLD: libc::c_int = 4 << 20;

fn main() -> std::process::ExitCode {
    // SAFETY: mallopt only changes allocator parameters; it is called first thing in
    // main, before any thread exists, and with a valid parameter and value.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        // Fewer arenas: freed memory of one thread's arena is reused by the others.
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
    let cli = cli::Cli::parse();
    if let cli::Command::Mount(m) = &cli.command {
        if let (true, Some(path)) = (m.foreground, &m.log_file) {
            // A foreground mount logs where --log-file says, as a background one does:
            // the log lines and anything else written to stderr (a panic's message).
            if let Err(e) = logging::stderr_to(path) {
                eprintln!("s3vol: --log-file {}: {e}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        }
    }
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
