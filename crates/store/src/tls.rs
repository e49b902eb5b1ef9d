//! One TLS client setup for the calls s3vol makes outside the AWS SDK (Alibaba's STS,
//! `s3vol check`'s handshake): the system's CA certificates, the aws-lc-rs provider.

use std::sync::Arc;

/// A connector that trusts the system's CAs; an error says why none can be built.
pub fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no trusted CA certificates found on this machine (install ca-certificates)".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
