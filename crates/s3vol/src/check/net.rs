//! The network half of `s3vol check`: name resolution, the TCP connection, the TLS
//! handshake and the server's clock, each on its own so a failure names its layer.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long each network step may take before it is reported as failed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the store's HTTP endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// `https` or `http`.
    pub tls: bool,
    /// Host name or address, as requests name it.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// The host requests go to: with virtual-host addressing the bucket is part of it.
    pub fn parse(endpoint: &str, bucket: Option<&str>) -> Result<Self, String> {
        let uri: http::Uri = endpoint.parse().map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(format!("endpoint {endpoint:?}: scheme {other:?} is not http or https")),
        };
        let host = uri.host().ok_or_else(|| format!("endpoint {endpoint:?} names no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = match bucket {
            Some(b) => format!("{b}.{host}"),
            None => host.to_string(),
        };
        Ok(HostPort { tls, port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }), host })
    }
}

/// The addresses the host resolves to.
pub async fn resolve(hp: &HostPort) -> Result<Vec<SocketAddr>, String> {
    let lookup = tokio::net::lookup_host((hp.host.as_str(), hp.port));
    match tokio::time::timeout(STEP_TIMEOUT, lookup).await {
        Err(_) => Err(format!("resolving {} timed out after {}s", hp.host, STEP_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", hp.host)),
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(format!("{} resolves to no address", hp.host))
            } else {
                Ok(addrs)
            }
        }
    }
}

/// A TCP connection to the first address that accepts one.
pub async fn connect(addrs: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), String> {
    let mut last = String::new();
    for addr in addrs {
        match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok((s, *addr)),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within {}s", STEP_TIMEOUT.as_secs()),
        }
    }
    Err(last)
}

/// A TLS session over `tcp`, with the certificate checked against the system's roots
/// for `host`. Returns the session and the protocol version.
pub async fn handshake(
    tcp: TcpStream,
    host: &str,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, String), String> {
    let connector = s3vol_store::tls_connector()?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
    match tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, tcp)).await {
        Err(_) => Err(format!("TLS handshake with {host} timed out after {}s", STEP_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("TLS handshake with {host} failed: {e}")),
        Ok(Ok(s)) => {
            let version = s.get_ref().1.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
            Ok((s, version))
        }
    }
}

/// What an unsigned `HEAD /` tells about the server: its clock and its name.
#[derive(Debug, Clone, Default)]
pub struct ServerHello {
    /// HTTP status of the answer (any answer shows the server speaks HTTP).
    pub status: u16,
    /// The `Date` header.
    pub date: Option<SystemTime>,
    /// The `Server` header (`AmazonS3`, `MinIO`, `AliyunOSS`...).
    pub server: Option<String>,
}

/// Sends `HEAD /` over `stream` and reads the answer's headers.
pub async fn hello<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, host: &str) -> Result<ServerHello, String> {
    let req = format!("HEAD / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: s3vol-check\r\nConnection: close\r\n\r\n");
    let exchange = async {
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(STEP_TIMEOUT, exchange).await {
        Err(_) => return Err(format!("no HTTP answer within {}s", STEP_TIMEOUT.as_secs())),
        Ok(Err(e)) => return Err(format!("HTTP exchange failed: {e}")),
        Ok(Ok(b)) => b,
    };
    parse_head(&String::from_utf8_lossy(&buf))
}

fn parse_head(text: &str) -> Result<ServerHello, String> {
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("the server did not answer in HTTP (first line {status_line:?})"))?;
    let mut hello = ServerHello { status, ..Default::default() };
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((k, v)) = line.split_once(':') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "date" => hello.date = httpdate::parse_http_date(v.trim()).ok(),
            "server" => hello.server = Some(v.trim().to_string()),
            _ => {}
        }
    }
    Ok(hello)
}

/// Seconds the server's clock is ahead of ours (negative: behind), from its `Date`.
pub fn clock_offset(server: SystemTime, sent: SystemTime, received: SystemTime) -> f64 {
    // The server stamped its answer somewhere between our send and receive.
    let mid = sent + received.duration_since(sent).unwrap_or_default() / 2;
    match server.duration_since(mid) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_the_host_requests_go_to() {
        let hp = HostPort::parse("https://s3.eu-west-1.amazonaws.com", None).unwrap();
        assert_eq!(hp, HostPort { tls: true, host: "s3.eu-west-1.amazonaws.com".into(), port: 443 });
        let hp = HostPort::parse("http://minio.local:9000", Some("data")).unwrap();
        assert_eq!(hp, HostPort { tls: false, host: "data.minio.local".into(), port: 9000 });
        let e = HostPort::parse("ftp://x", None).unwrap_err();
        assert!(e.contains("ftp"), "{e}");
    }

    #[test]
    fn answers_give_status_date_and_server() {
        let h = parse_head("HTTP/1.1 403 Forbidden\r\nServer: AmazonS3\r\nDate: Mon, 30 Nov 2026 11:58:19 GMT\r\n\r\n")
            .unwrap();
        assert_eq!(h.status, 403);
        assert_eq!(h.server.as_deref(), Some("AmazonS3"));
        assert_eq!(h.date, Some(httpdate::parse_http_date("Mon, 30 Nov 2026 11:58:19 GMT").unwrap()));
        assert!(parse_head("SSH-2.0-OpenSSH\r\n").unwrap_err().contains("SSH-2.0"));
    }

    #[test]
    fn clock_offset_is_measured_from_the_middle_of_the_exchange() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(clock_offset(t0 + Duration::from_secs(61), t0, t1), 60.0);
        assert_eq!(clock_offset(t0 - Duration::from_secs(99), t0, t1), -100.0);
    }
}
