//! The API as `roomcast admin` speaks it: one HTTP client, an administrator's login session,
//! and the server's errors turned into sentences.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer read (a page of 100 rooms with their participants fits many times).
const MAX_ANSWER: usize = 16 << 20;

/// A client of one server's API.
pub struct Api {
    http: reqwest::Client,
    base: url::Url,
    token: Option<String>,
    /// Whether the session was opened here (and so is ended when done).
    logged_in: bool,
}

impl Api {
    /// A client of the server at `base` (`http://` or `https://`). An HTTPS server is trusted
    /// by the system's roots, or by the SHA-256 of its certificate (`cert_sha256`, hex) as the
    /// self-signed development certificate needs.
    pub fn new(base: url::Url, cert_sha256: Option<&str>) -> anyhow::Result<Api> {
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            bail!("--url must be an http:// or https:// URL");
        }
        if !base.username().is_empty() || base.password().is_some() {
            bail!("--url must not hold credentials (the login uses --user and a password)");
        }
        let loopback = match base.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        if base.scheme() == "http" && !loopback {
            bail!("refusing to send an administrator's credentials unencrypted to {base}: use https://");
        }
        if base.scheme() == "http" && cert_sha256.is_some() {
            bail!("--cert-sha256 is for an https:// URL");
        }
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("roomcast-admin/", env!("CARGO_PKG_VERSION")));
        if let Some(hash) = cert_sha256 {
            let tls = crate::client::pinned_tls(hash, b"http/1.1").context("--cert-sha256")?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        Ok(Api {
            http: builder.build().context("HTTP client")?,
            base,
            token: None,
            logged_in: false,
        })
    }

    /// Acts with an existing login session token.
    pub fn with_token(&mut self, token: String) {
        self.token = Some(token);
        self.logged_in = false;
    }

    /// Logs in as `user`; returns the session token.
    pub async fn login(&mut self, user: &str, password: &str) -> anyhow::Result<String> {
        let answer = self
            .call(
                Method::POST,
                &["api", "login"],
                &[],
                Some(json!({"username": user, "password": password})),
            )
            .await
            .map_err(|e| match e.downcast::<Refused>() {
                Ok(refused) => anyhow!("login as {user} refused: {refused}"),
                Err(e) => e,
            })?;
        let token = answer["token"]
            .as_str()
            .ok_or_else(|| anyhow!("the login answer holds no token"))?
            .to_owned();
        if answer["user"]["is_admin"] != json!(true) {
            // Not kept: the session is ended at once.
            self.token = Some(token);
            self.logged_in = true;
            self.logout().await;
            bail!("{user} is not an administrator");
        }
        self.token = Some(token.clone());
        self.logged_in = true;
        Ok(token)
    }

    /// Ends the session if it was opened here (best effort: it expires anyway).
    pub async fn logout(&mut self) {
        if self.logged_in {
            let _ = self.call(Method::POST, &["api", "logout"], &[], None).await;
            self.logged_in = false;
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &url::Url {
        &self.base
    }

    /// Sends one request to the path made of `segments` (each percent-encoded) with `query`,
    /// and returns the JSON answer (`{}` for an empty one). A refusal becomes an error with
    /// the server's message and code.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
            bail!("{bad:?} is not a name");
        }
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|()| anyhow!("{} cannot hold a path", self.base))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let mut response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(e))? {
            if bytes.len() + chunk.len() > MAX_ANSWER {
                bail!("the server's answer is larger than {MAX_ANSWER} bytes");
            }
            bytes.extend_from_slice(&chunk);
        }
        let answer: Option<Value> = if bytes.is_empty() {
            Some(json!({}))
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        match (status.is_success(), answer) {
            (true, Some(answer)) => Ok(answer),
            (true, None) => bail!(
                "{} answered {status} with something other than JSON",
                self.base
            ),
            (false, answer) => Err(refusal(status, answer.as_ref())),
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        if cause.contains("certificate") {
            return anyhow!(
                "the certificate of {} is not trusted ({cause}); for the development \
                 certificate pass --cert-sha256 with the value of its /cert-hash",
                self.base
            );
        }
        let what = if e.is_timeout() {
            "no answer in time"
        } else {
            "cannot reach the server"
        };
        anyhow!("{what} at {}: {cause}", self.base)
    }
}

/// The server refused a request: its message, code and status.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    /// `error.code` and `error.message` of the answer, if it had them.
    pub error: Option<(String, String)>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some((code, message)) => write!(f, "{message} ({code}, HTTP {})", self.status.as_u16()),
            None => write!(f, "the server answered HTTP {}", self.status),
        }
    }
}

impl std::error::Error for Refused {}

fn refusal(status: StatusCode, answer: Option<&Value>) -> anyhow::Error {
    let error = answer.map(|a| &a["error"]).and_then(|e| {
        Some((
            e["code"].as_str()?.to_owned(),
            e["message"].as_str()?.to_owned(),
        ))
    });
    Refused { status, error }.into()
}
