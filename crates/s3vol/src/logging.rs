use tracing_subscriber::EnvFilter;

/// Sets up `tracing`: one line per event, text or JSON, filtered by `RUST_LOG`
/// (default `info`, or `debug` when the mount asked for it).
pub fn init(format: &str, debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
