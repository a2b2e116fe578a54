//! A minimal HTTP/1.1 client over a real TCP socket, for API tests.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The value of header `name` (any case), if the answer has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The stable error code of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// A TCP connection to `addr`, from the local address `from` if given (another 127.0.0.x:
/// another client to the server).
pub async fn connect_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
) -> tokio::net::TcpStream {
    match from {
        None => tokio::net::TcpStream::connect(addr).await.unwrap(),
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
            socket.connect(addr).await.unwrap()
        }
    }
}

/// Sends one request; `body` is sent as is with `content_type`.
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Response {
    raw_from(None, addr, method, path, token, content_type, body).await
}

/// [`raw`] from the local address `from` (another 127.0.0.x: another client to the server).
pub async fn raw_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Response {
    let stream = connect_from(from, addr).await;
    exchange(stream, addr, method, path, token, content_type, body, "").await
}

/// A request without a body and with `headers` (lines ending in `\r\n`) added.
pub async fn with_headers(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Response {
    let stream = connect_from(None, addr).await;
    exchange(stream, addr, method, path, None, "", b"", headers).await
}

/// The sum of the samples in `addr`'s `/metrics` whose line starts with `prefix` (a name, or
/// a name and its labels: `roomcast_sessions{transport="quic"}`).
pub async fn metric(addr: SocketAddr, prefix: &str) -> f64 {
    let r = raw(addr, "GET", "/metrics", None, "", b"").await;
    assert_eq!(r.status, 200);
    samples(&String::from_utf8_lossy(&r.body), prefix)
}

/// The sum of the samples of a `/metrics` text whose line starts with `prefix`.
pub fn samples(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One GET over TLS to `addr`, accepting only the certificate with SHA-256 `cert_sha256`; the
/// TLS handshake's error if there was one.
pub async fn https_get(
    addr: SocketAddr,
    cert_sha256: &str,
    path: &str,
) -> Result<Response, String> {
    let config = roomcast::client::pinned_tls(cert_sha256, b"http/1.1").unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = connect_from(None, addr).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(exchange(tls, addr, "GET", path, None, "", b"", "").await)
}

/// Sends one request on `stream` (with `extra` header lines) and reads the whole answer.
#[allow(clippy::too_many_arguments)]
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
    extra: &str,
) -> Response {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str(extra);
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (e.g. 413) and close before reading a large body.
    let _ = stream.write_all(body).await;
    let mut buf = vec![];
    let _ = stream.read_to_end(&mut buf).await;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let headers = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = headers[9..12].parse().unwrap();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    loop {
        let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + size]);
        b = &b[end + 2 + size + 2..];
    }
}

pub async fn json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Response {
    let bytes = if body.is_null() {
        vec![]
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    raw(addr, method, path, token, "application/json", &bytes).await
}

/// [`json`] from the local address `from`.
pub async fn json_from(
    from: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Response {
    let bytes = serde_json::to_vec(&body).unwrap();
    raw_from(
        Some(from),
        addr,
        method,
        path,
        token,
        "application/json",
        &bytes,
    )
    .await
}

/// Registers and logs in `username` through the API at `addr`; returns the login token.
pub async fn register(addr: SocketAddr, username: &str) -> String {
    let creds = serde_json::json!({"username": username, "password": "password123"});
    let r = json(addr, "POST", "/api/users", None, creds.clone()).await;
    assert_eq!(
        r.status,
        201,
        "register {username}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let r = json(addr, "POST", "/api/login", None, creds).await;
    assert_eq!(r.status, 200);
    r.json()["token"].as_str().unwrap().to_owned()
}

/// Creates a room as `host` (a login token) with `spec`; returns its id.
pub async fn create_room(addr: SocketAddr, host: &str, spec: Value) -> String {
    let r = json(addr, "POST", "/api/rooms", Some(host), spec).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["room"]["id"].as_str().unwrap().to_owned()
}

/// Joins `room` as the user of `login`; the answer holds the media token.
pub async fn join(addr: SocketAddr, login: &str, room: &str, body: Value) -> Response {
    json(
        addr,
        "POST",
        &format!("/api/rooms/{room}/join"),
        Some(login),
        body,
    )
    .await
}
