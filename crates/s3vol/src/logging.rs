use tracing_subscriber::EnvFilter;

/// Sets up `tracing`: one line per event, text or JSON, filtered by `RUST_LOG`
/// (default `info`, or `debug` when the mount asked for it).
pub fn init(format: &str, debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
