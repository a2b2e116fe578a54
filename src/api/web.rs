//! The web client: embedded in the binary at build time (`web/`), so an installed `roomcast`
//! serves it from any directory; `web_dir` serves a directory instead (development).
//!
//! Embedded files are answered with their content type, a strong ETag (their SHA-256) and
//! `Cache-Control: no-cache`: browsers keep them and revalidate each use, answered with 304
//! while the binary is the same (the file names carry no version to cache them longer).

use std::path::PathBuf;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Embedded;

/// The fallback that serves the web client: `dir` if given, else the embedded files.
pub fn service(dir: Option<PathBuf>) -> Router {
    match dir {
        Some(dir) => Router::new().fallback_service(tower_http::services::ServeDir::new(dir)),
        None => Router::new().fallback(embedded),
    }
}

async fn embedded(method: Method, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let path = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        p if p.ends_with('/') => return not_found(),
        p => p,
    };
    let Some(file) = Embedded::get(path) else {
        return not_found();
    };
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    }
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else if method == Method::HEAD {
        let mut r = StatusCode::OK.into_response();
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(file.data.len()));
        r
    } else {
        file.data.into_owned().into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if !fresh {
        if let Ok(v) = HeaderValue::from_str(&content_type(file.metadata.mimetype())) {
            h.insert(header::CONTENT_TYPE, v);
        }
    }
    response
}

/// Text types say their charset (every file of the client is UTF-8).
fn content_type(mime: &str) -> String {
    if mime.starts_with("text/") || mime.ends_with("javascript") || mime.ends_with("json") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_client_is_embedded_with_a_type() {
        for name in [
            "index.html",
            "app.js",
            "style.css",
            "audio-worklet.js",
            "check.html",
        ] {
            let file = Embedded::get(name).unwrap_or_else(|| panic!("{name} not embedded"));
            let on_disk =
                std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/web/").to_owned() + name)
                    .unwrap();
            assert_eq!(file.data.as_ref(), on_disk.as_slice(), "{name}");
        }
        assert_eq!(
            content_type(Embedded::get("app.js").unwrap().metadata.mimetype()),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type(Embedded::get("index.html").unwrap().metadata.mimetype()),
            "text/html; charset=utf-8"
        );
        assert!(Embedded::get("../Cargo.toml").is_none());
    }
}
