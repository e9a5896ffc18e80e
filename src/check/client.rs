//! The HTTP side of the reputation providers. Each lookup is built as a value
//! ([`request`]: path, query, where the key goes) and each answer read back
//! ([`interpret`]: a reputation, or why there is none) without I/O; [`ProviderClient`]
//! sends one with the provider's key and time limit.
//!
//! Keys never appear in errors or logs: transport errors keep only their cause (not the
//! URL, which carries the key for the providers that want it in the query).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::HeaderValue;

use super::providers::{Provider, Reputation};
use crate::feed::api::{error_message, http_client, load_key, rate_headers, read_key_file, transport_error};

/// One reputation provider the check service asks.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub provider: Provider,
    /// Where its API lives (WAYSCloud: the feed's `base_url`).
    pub base_url: String,
    /// Its key (WAYSCloud: the feed's key, so `None`). Must not be readable by others.
    pub key_file: Option<PathBuf>,
    /// The time limit of one request.
    pub timeout: Duration,
    /// How long an answer is reused.
    pub cache: Duration,
    /// Its weight when `combine = "weighted"`.
    pub weight: f64,
}

/// Where a provider wants its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPlace {
    /// In this request header, as is.
    Header(&'static str),
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// In this query parameter.
    Query(&'static str),
}

/// One lookup, without the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub key: KeyPlace,
}

/// Each provider's documented request for `ip`.
pub fn request(provider: Provider, ip: IpAddr) -> Lookup {
    match provider {
        Provider::Wayscloud => {
            Lookup { path: format!("/v1/ip/{ip}/threat"), query: Vec::new(), key: KeyPlace::Header("X-API-Key") }
        }
        Provider::Ipgeolocation => {
            Lookup { path: "/v3/security".into(), query: vec![("ip", ip.to_string())], key: KeyPlace::Query("apiKey") }
        }
        Provider::Apiarmor => Lookup {
            path: "/v1/ip-reputation-check".into(),
            query: vec![("ip", ip.to_string())],
            key: KeyPlace::Bearer,
        },
        Provider::Ipasis => Lookup { path: format!("/json/{ip}"), query: Vec::new(), key: KeyPlace::Query("key") },
    }
}

/// Why a provider gave no reputation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 429: stop asking this provider for `retry_after` (when it said).
    RateLimited { retry_after: Option<Duration> },
    /// Anything else: no key, a refused key, an error status, no answer in time, an
    /// answer that is not the documented shape.
    Error(String),
}

impl Failure {
    /// One line for the JSON answer and the log.
    pub fn describe(&self) -> String {
        match self {
            Failure::RateLimited { retry_after: Some(d) } => {
                format!("rate limited (429, retry after {}s)", d.as_secs())
            }
            Failure::RateLimited { retry_after: None } => "rate limited (429)".into(),
            Failure::Error(message) => message.clone(),
        }
    }
}

/// Reads a provider's HTTP answer.
pub fn interpret(
    provider: Provider,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Reputation, Failure> {
    match status {
        200..=299 => {
            provider.read(body).ok_or_else(|| Failure::Error("an answer that is not the documented shape".into()))
        }
        429 => Err(Failure::RateLimited { retry_after }),
        401 | 403 => Err(Failure::Error(format!("the key was refused (HTTP {status}): {}", error_message(body)))),
        _ => Err(Failure::Error(format!("HTTP {status}: {}", error_message(body)))),
    }
}

/// A provider's client: its settings, its key (or why there is none) and a connection pool.
pub struct ProviderClient {
    pub config: ProviderConfig,
    key: Result<HeaderValue, String>,
    http: reqwest::Client,
}

impl ProviderClient {
    /// Builds the client and reads the key: WAYSCloud's is the feed's
    /// (`BANSHARE_API_KEY` or `feed_key_file`), the others' their own `key_file`. A
    /// missing or unsafe key is not fatal: every lookup then fails with the reason.
    pub fn new(config: &ProviderConfig, feed_key_file: &Path) -> ProviderClient {
        let key_file = config.key_file.as_deref().unwrap_or(feed_key_file);
        let key = match config.provider {
            Provider::Wayscloud => load_key(key_file),
            _ => read_key_file(key_file),
        };
        let key = match key {
            Ok(Some(key)) => key.header(),
            Ok(None) => Err(format!("no key: {} does not exist", key_file.display())),
            Err(e) => Err(e.to_string()),
        };
        // Without its time limits the client is never used: every lookup fails with why.
        let (http, key) = match http_client(config.timeout) {
            Ok(http) => (http, key),
            Err(e) => (reqwest::Client::new(), Err(e)),
        };
        ProviderClient { config: config.clone(), key, http }
    }

    pub fn provider(&self) -> Provider {
        self.config.provider
    }

    /// Why this provider cannot be asked at all (no usable key, no HTTP client), if so.
    pub fn unusable(&self) -> Option<&str> {
        self.key.as_ref().err().map(String::as_str)
    }

    /// Asks the provider about `ip`.
    pub async fn lookup(&self, ip: IpAddr) -> Result<Reputation, Failure> {
        let key = self.key.clone().map_err(Failure::Error)?;
        let Lookup { path, mut query, key: place } = request(self.config.provider, ip);
        let url = format!("{}{path}", self.config.base_url);
        let mut builder = self.http.get(&url).header("Accept", "application/json");
        match place {
            KeyPlace::Header(name) => builder = builder.header(name, key),
            KeyPlace::Bearer => {
                let mut bearer = HeaderValue::from_bytes(&[b"Bearer ", key.as_bytes()].concat())
                    .map_err(|_| Failure::Error("the key cannot be sent in a header".into()))?;
                bearer.set_sensitive(true);
                builder = builder.header("Authorization", bearer);
            }
            KeyPlace::Query(name) => query.push((name, key.to_str().unwrap_or_default().to_string())),
        }
        if !query.is_empty() {
            builder = builder.query(&query);
        }
        let response = builder.send().await.map_err(|e| Failure::Error(transport_error(e)))?;
        let status = response.status().as_u16();
        let (_, retry_after) = rate_headers(response.headers());
        let body = response.bytes().await.map_err(|e| Failure::Error(transport_error(e)))?;
        interpret(self.config.provider, status, retry_after, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_provider_gets_its_documented_request() {
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(request(Provider::Wayscloud, ip).path, "/v1/ip/203.0.113.9/threat");
        let g = request(Provider::Ipgeolocation, ip);
        assert_eq!(
            (g.path.as_str(), g.query, g.key),
            ("/v3/security", vec![("ip", ip.to_string())], KeyPlace::Query("apiKey"))
        );
        let a = request(Provider::Apiarmor, ip);
        assert_eq!((a.path.as_str(), a.key), ("/v1/ip-reputation-check", KeyPlace::Bearer));
        let i = request(Provider::Ipasis, "2001:db8::5".parse().unwrap());
        assert_eq!((i.path.as_str(), i.key), ("/json/2001:db8::5", KeyPlace::Query("key")));
    }

    #[test]
    fn errors_and_429s_are_failures_never_clean() {
        let p = Provider::Ipasis;
        assert_eq!(interpret(p, 200, None, br#"{"is_tor":true}"#).unwrap().score, 70);
        assert_eq!(
            interpret(p, 429, Some(Duration::from_secs(60)), b""),
            Err(Failure::RateLimited { retry_after: Some(Duration::from_secs(60)) })
        );
        let e = interpret(p, 401, None, br#"{"message":"Invalid API key"}"#).unwrap_err().describe();
        assert_eq!(e, "the key was refused (HTTP 401): Invalid API key");
        assert_eq!(interpret(p, 502, None, b"bad gateway").unwrap_err().describe(), "HTTP 502: bad gateway");
        assert!(matches!(interpret(p, 200, None, b"<html>"), Err(Failure::Error(_))));
    }
}
