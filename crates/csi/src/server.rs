use std::future::Future;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::controller::ControllerService;
use crate::identity::IdentityService;
use crate::node::NodeService;
use crate::pb::controller_server::ControllerServer;
use crate::pb::identity_server::IdentityServer;
use crate::pb::node_server::NodeServer;

/// Why the gRPC server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The endpoint is not `unix:///path` (or a plain absolute path).
    #[error("endpoint {0:?}: expected unix:///path/to/csi.sock")]
    BadEndpoint(String),
    /// The socket could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The transport failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Parses `unix:///csi/csi.sock` (or `/csi/csi.sock`) into a path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let p = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !p.starts_with('/') {
        return Err(ServeError::BadEndpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(p))
}

/// Binds a unix socket, removing a stale socket file left by a previous run.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Bind { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(path).map_err(err)
}

/// Serves Identity (always), Controller and Node (when given) on `listener` until
/// `shutdown` resolves; in-flight calls finish first.
pub async fn serve(
    listener: UnixListener,
    identity: IdentityService,
    controller: Option<ControllerService>,
    node: Option<NodeService>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let router = tonic::transport::Server::builder()
        .layer(crate::metrics_layer::MetricsLayer)
        .add_service(IdentityServer::new(identity))
        .add_optional_service(controller.map(ControllerServer::new))
        .add_optional_service(node.map(NodeServer::new));
    router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown).await?;
    Ok(())
}
