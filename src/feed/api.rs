//! The HTTP side of the WAYSCloud client: the key, one request, and what its answer
//! means for the caller (success, slow down, retry later, stop, or give up on this one).
//! Requests are built as values ([`Call`]); [`classify`] turns a response into an
//! [`Answer`] without any I/O, so the retry rules are unit-tested as plain functions.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;

/// The API key. Never printed: `Debug` and `Display` show a placeholder, and the header
/// carrying it is marked sensitive.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(text: &str) -> Option<ApiKey> {
        let text = text.trim();
        (!text.is_empty()).then(|| ApiKey(text.to_string()))
    }

    /// The key as a header value marked sensitive (never shown in debug output).
    pub(crate) fn header(&self) -> Result<HeaderValue, String> {
        let mut value =
            HeaderValue::from_str(&self.0).map_err(|_| "the key contains characters a header cannot carry")?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// An HTTP client with banshare's user agent and `timeout` for a whole request (at most
/// 5 s of it to connect); rustls with ring.
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    // Installing the crypto provider twice is harmless (the first one stays).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("banshare/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", innermost(&e)))
}

/// The deepest cause of an error (reqwest's own text is only its kind: "builder error").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = e;
    while let Some(s) = deepest.source() {
        deepest = s;
    }
    deepest.to_string()
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Why the key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{path}: the API key file is readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` (banshare refuses to use a key others can read)"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path}: cannot read the API key: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the API key file is empty")]
    Empty { path: PathBuf },
}

/// The environment variable that overrides the key file.
pub const KEY_ENV: &str = "BANSHARE_API_KEY";

/// Reads the key: `BANSHARE_API_KEY` when set, else `path` (which must not be readable by
/// group or others). `Ok(None)`: no key anywhere, the feed is off.
pub fn load_key(path: &Path) -> Result<Option<ApiKey>, KeyError> {
    key_from(std::env::var(KEY_ENV).ok(), path)
}

/// Reads a key from `path` alone (another provider's key: no environment override),
/// refused when group or others can read it. `Ok(None)`: the file does not exist.
pub fn read_key_file(path: &Path) -> Result<Option<ApiKey>, KeyError> {
    key_from(None, path)
}

/// [`load_key`] with the variable's value given.
fn key_from(env: Option<String>, path: &Path) -> Result<Option<ApiKey>, KeyError> {
    if let Some(key) = env.as_deref().and_then(ApiKey::new) {
        return Ok(Some(key));
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(KeyError::Read { path: path.into(), source }),
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o044 != 0 {
        return Err(KeyError::Exposed { path: path.into(), mode });
    }
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
    ApiKey::new(&text).map(Some).ok_or_else(|| KeyError::Empty { path: path.into() })
}

/// One API request, as a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub post: bool,
    /// Path under the base URL, starting with `/v1/ip/`.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
}

impl Call {
    pub fn get(path: impl Into<String>, query: Vec<(&'static str, String)>) -> Call {
        Call { post: false, path: path.into(), query, body: None }
    }

    pub fn post(path: impl Into<String>, body: Value) -> Call {
        Call { post: true, path: path.into(), query: Vec::new(), body: Some(body) }
    }
}

/// The `X-RateLimit-*` headers, when the server sent them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateInfo {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Epoch seconds when the window resets.
    pub reset: Option<i64>,
}

/// A response as received.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub rate: RateInfo,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

/// What a response (or its absence) means.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 2xx.
    Ok,
    /// 429: too many requests; wait `retry_after` when given.
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, 408 or no answer at all: retry later, with backoff.
    Unavailable { retry_after: Option<Duration>, message: String },
    /// 401 or 403: the key is wrong or not allowed; stop until the operator acts.
    Unauthorized { message: String },
    /// Any other 4xx (422 included): this request is bad; never retry it.
    Rejected { status: u16, message: String },
}

impl Answer {
    /// An answer that is not a success, as one line for a person.
    pub fn describe(&self) -> String {
        match self {
            Answer::Ok => "no response".into(),
            Answer::RateLimited { retry_after: Some(d) } => {
                format!("rate limited by the API (retry after {}s)", d.as_secs())
            }
            Answer::RateLimited { retry_after: None } => "rate limited by the API".into(),
            Answer::Unavailable { message, .. } => format!("the API is unavailable: {message}"),
            Answer::Unauthorized { message } => format!("the API refused the key: {message}"),
            Answer::Rejected { message, .. } => format!("the API rejected the request: {message}"),
        }
    }
}

/// Maps a response to what the caller must do (see `wayscloud-api.md`: never retry a 4xx
/// other than 408 and 429).
pub fn classify(r: &Response) -> Answer {
    let message = || format!("HTTP {}: {}", r.status, error_message(&r.body));
    match r.status {
        200..=299 => Answer::Ok,
        429 => Answer::RateLimited { retry_after: r.retry_after },
        401 | 403 => Answer::Unauthorized { message: message() },
        408 | 500..=599 => Answer::Unavailable { retry_after: r.retry_after, message: message() },
        _ => Answer::Rejected { status: r.status, message: message() },
    }
}

/// The human message of an error body, in any of the shapes the contract lists
/// (FastAPI `detail` as text, object or list; `error.message`; `message`), else the
/// start of the body itself.
pub fn error_message(body: &[u8]) -> String {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        return if text.is_empty() { "(no message)".into() } else { text.chars().take(200).collect() };
    };
    let text = |v: &Value| v.as_str().map(str::to_string);
    let from_detail = |d: &Value| match d {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("error").or(o.get("message")).and_then(text),
        Value::Array(items) => {
            let msgs: Vec<String> = items
                .iter()
                .filter_map(|i| {
                    let msg = i.get("msg").and_then(Value::as_str)?;
                    let loc = i.get("loc").and_then(Value::as_array).map(|l| {
                        l.iter().map(|p| p.as_str().map_or(p.to_string(), str::to_string)).collect::<Vec<_>>().join(".")
                    });
                    Some(match loc {
                        Some(loc) if !loc.is_empty() => format!("{loc}: {msg}"),
                        _ => msg.to_string(),
                    })
                })
                .collect();
            (!msgs.is_empty()).then(|| msgs.join("; "))
        }
        _ => None,
    };
    json.get("detail")
        .and_then(from_detail)
        .or_else(|| json.get("error").and_then(|e| e.get("message").and_then(text).or_else(|| text(e))))
        .or_else(|| json.get("message").and_then(text))
        .unwrap_or_else(|| json.to_string().chars().take(200).collect())
}

/// The client: one connection pool, the base URL and the key.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: HeaderValue,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Api {
    pub fn new(base_url: &str, key: &ApiKey, timeout: Duration) -> Result<Api, String> {
        let key = key.header().map_err(|_| "the API key contains characters a header cannot carry")?;
        let http = http_client(timeout)?;
        Ok(Api { http, base: base_url.trim_end_matches('/').to_string(), key })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends one call. A transport error (refused, reset, timeout) is `Err` with its
    /// text; any HTTP status is `Ok`.
    pub async fn send(&self, call: &Call) -> Result<Response, String> {
        let url = format!("{}{}", self.base, call.path);
        let builder = if call.post { self.http.post(&url) } else { self.http.get(&url) };
        let mut builder = builder.header("X-API-Key", self.key.clone()).header("Accept", "application/json");
        if !call.query.is_empty() {
            builder = builder.query(&call.query);
        }
        if let Some(body) = &call.body {
            builder = builder.json(body);
        }
        let response = builder.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let (rate, retry_after) = rate_headers(response.headers());
        let body = response.bytes().await.map_err(transport_error)?.to_vec();
        Ok(Response { status, rate, retry_after, body })
    }

    /// Sends a call that must succeed: the 2xx response, or what went wrong as one line.
    pub async fn success(&self, call: &Call) -> Result<Response, String> {
        match self.exchange(call).await {
            (Answer::Ok, Some(r)) => Ok(r),
            (answer, _) => Err(answer.describe()),
        }
    }

    /// Sends and classifies; a transport error is [`Answer::Unavailable`].
    pub async fn exchange(&self, call: &Call) -> (Answer, Option<Response>) {
        match self.send(call).await {
            Ok(r) => (classify(&r), Some(r)),
            Err(message) => (Answer::Unavailable { retry_after: None, message }, None),
        }
    }
}

/// A transport error's text, without the URL's query (which never holds the key, but
/// may hold an address the operator would rather see once).
pub(crate) fn transport_error(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_decode() || e.is_body() {
        "broken response"
    } else {
        "request failed"
    };
    match std::error::Error::source(&e) {
        Some(source) => format!("{kind}: {}", innermost(source)),
        None => kind.to_string(),
    }
}

/// The `X-RateLimit-*` headers and `Retry-After` (seconds) of a response.
pub(crate) fn rate_headers(h: &HeaderMap) -> (RateInfo, Option<Duration>) {
    let num = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<i64>().ok());
    let rate = RateInfo {
        limit: num("x-ratelimit-limit").and_then(|v| u64::try_from(v).ok()),
        remaining: num("x-ratelimit-remaining").and_then(|v| u64::try_from(v).ok()),
        reset: num("x-ratelimit-reset"),
    };
    let retry_after = num("retry-after").and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs);
    (rate, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response { status, rate: RateInfo::default(), retry_after: None, body: body.as_bytes().to_vec() }
    }

    #[test]
    fn statuses_map_to_what_the_caller_does() {
        assert_eq!(classify(&response(202, "{}")), Answer::Ok);
        let mut r = response(429, "");
        r.retry_after = Some(Duration::from_secs(30));
        assert_eq!(classify(&r), Answer::RateLimited { retry_after: Some(Duration::from_secs(30)) });
        assert!(matches!(classify(&response(503, "")), Answer::Unavailable { .. }));
        assert!(matches!(classify(&response(408, "")), Answer::Unavailable { .. }));
        assert!(matches!(classify(&response(401, r#"{"detail":"Invalid API key"}"#)),
            Answer::Unauthorized { message } if message == "HTTP 401: Invalid API key"));
        assert!(matches!(classify(&response(422, "")), Answer::Rejected { status: 422, .. }));
        assert!(matches!(classify(&response(404, "")), Answer::Rejected { status: 404, .. }));
    }

    #[test]
    fn error_messages_in_every_listed_shape() {
        let m = |s: &str| error_message(s.as_bytes());
        assert_eq!(m(r#"{"detail": "Invalid API key"}"#), "Invalid API key");
        assert_eq!(m(r#"{"detail": {"error": "quota exceeded", "limit": 20}}"#), "quota exceeded");
        assert_eq!(
            m(r#"{"detail": [{"loc": ["body", "category"], "msg": "string does not match regex", "type": "x"}]}"#),
            "body.category: string does not match regex"
        );
        assert_eq!(m(r#"{"error": {"code": "bad", "message": "no such ip"}}"#), "no such ip");
        assert_eq!(m(r#"{"message": "slow down"}"#), "slow down");
        assert_eq!(m("<html>Bad Gateway</html>"), "<html>Bad Gateway</html>");
        assert_eq!(m(""), "(no message)");
    }

    #[test]
    fn the_key_is_never_printed() {
        let key = ApiKey::new("wayscloud_ip_secret123\n").unwrap();
        assert!(!format!("{key:?}").contains("secret"));
        let api = Api::new("http://127.0.0.1:1", &key, Duration::from_secs(1)).unwrap();
        assert!(!format!("{api:?}").contains("secret"));
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-key");
        std::fs::write(&path, "wayscloud_ip_x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = key_from(None, &path).unwrap_err().to_string();
        assert!(err.contains("readable by group or others (mode 0644)"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(key_from(None, &path).unwrap(), ApiKey::new("wayscloud_ip_x"));
        assert_eq!(key_from(None, &dir.path().join("missing")).unwrap(), None);
        // The variable wins over the file.
        assert_eq!(key_from(Some("wayscloud_ip_env".into()), &path).unwrap(), ApiKey::new("wayscloud_ip_env"));
    }
}
