use tracing_subscriber::EnvFilter;

/// Crates whose debug and trace output carries key material (the AWS SDK prints the
/// signing identity, access key id included; HTTP crates can print headers at trace).
/// They are capped at `info` whatever `RUST_LOG` says: no key ever reaches a log.
const KEY_BEARING_TARGETS: &[&str] = &[
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sdk_s3",
    "aws_sigv4",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_types",
    "h2",
    "hyper",
    "hyper_util",
];

/// Sets up `tracing`: one line per event, text or JSON, filtered by `RUST_LOG`
/// (default `info`, or `debug` when the mount asked for it).
pub fn init(format: &str, debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    for target in KEY_BEARING_TARGETS {
        // A directive for the same target replaces the user's; a target beats a global level.
        if let Ok(d) = format!("{target}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Sends this process's stderr (its log and panic messages) to the end of `path`,
/// created if missing and readable by its owner only (a log names buckets and keys).
pub fn stderr_to(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    nix::unistd::dup2_stderr(file).map_err(std::io::Error::from)
}
