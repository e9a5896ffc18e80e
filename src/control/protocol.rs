//! Wire types of the control protocol, shared by the server and the client.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::decision::{Decision, Source};
use crate::store::Upsert;

/// The protocol version this build speaks. A request with a higher `v` is refused with
/// [`ErrorCode::UnsupportedVersion`]; lower versions are answered as far as they go.
pub const VERSION: u32 = 1;

/// The longest request line (1 MiB): a client cannot make the daemon buffer more. An
/// import larger than this is sent in several requests (the CLI does it).
pub const MAX_LINE: usize = 1 << 20;
/// The longest `reason` of a ban (characters).
pub const MAX_REASON: usize = 1000;
/// The longest jail name and category (characters).
pub const MAX_NAME: usize = 128;
/// The most targets one streamed import carries.
pub const MAX_IMPORT: usize = 1_000_000;
/// The longest line of a streamed import (an IPv6 CIDR is at most 43 bytes).
pub const MAX_TARGET: usize = 128;
/// Connections the control socket serves at once; one more is answered with an error
/// and closed.
pub const MAX_CONNECTIONS: usize = 256;

/// A request, tagged by `cmd`. The envelope's `v` is checked before this is parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping,
    Status,
    /// Read the config file again and put it in force; answers once it is (or with the
    /// config's error, the previous config staying in force).
    Reload,
    List {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<Source>,
    },
    Query {
        ip: String,
    },
    Ban {
        /// Address or CIDR as typed; the daemon validates it again.
        target: String,
        /// Length in seconds; `None` means the configured `manual_bantime`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_secs: Option<u64>,
        /// No expiry (overrides `for_secs`).
        #[serde(default)]
        permanent: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Also report it to the community feed (manual bans are not reported otherwise).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        report: bool,
        /// The report's category (default `other`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        category: Option<String>,
    },
    Unban {
        target: String,
    },
    /// Many manual bans in one store transaction and one firewall batch. The targets
    /// come in the request (`targets`) or, for large lists, as `lines` lines of one
    /// target each right after the request line (at most [`MAX_IMPORT`], each at most
    /// [`MAX_TARGET`] bytes), which spares both sides a JSON array of a million strings.
    Import {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        targets: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lines: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_secs: Option<u64>,
        #[serde(default)]
        permanent: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A fail2ban ban or unban (the `banshare` action, `banshare report`).
    Fail2ban {
        event: crate::fail2ban::Event,
    },
    /// Pull the live feed now; answers with what changed ([`crate::feed::pull::PullReport`]).
    Sync,
    /// Local state, then the feed's lookup (cached).
    Check {
        ip: String,
    },
    Register {
        name: String,
        contact: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
        source_type: String,
    },
    Verify {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    },
    Delist {
        ip: String,
        reason: String,
        hostname: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contact: Option<String>,
    },
}

/// One reply line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    pub fn ok(data: serde_json::Value) -> Reply {
        Reply { v: VERSION, ok: true, data: Some(data), error: None }
    }

    /// The reply carrying `response` as its `data`.
    pub fn of(response: &Response) -> Reply {
        match serde_json::to_value(response) {
            Ok(data) => Reply::ok(data),
            Err(e) => Reply::err(ErrorBody::new(ErrorCode::Internal, format!("cannot write the answer: {e}"))),
        }
    }

    pub fn err(error: ErrorBody) -> Reply {
        Reply { v: VERSION, ok: false, data: None, error: Some(error) }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody { code, message: message.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, missing or mistyped fields, unknown command.
    BadRequest,
    /// The request's `v` is newer than this daemon.
    UnsupportedVersion,
    /// The request line exceeded [`MAX_LINE`].
    TooLarge,
    /// An address or CIDR that does not parse.
    InvalidTarget,
    /// The safety rules refuse it (loopback, allowlist, ...).
    Refused,
    /// Nothing to act on (unban of something not blocked).
    NotFound,
    /// The daemon failed (the store).
    Internal,
    /// Recorded, but the kernel refused it or the firewall failed: not blocked.
    Firewall,
    /// The daemon serves as many connections as it takes; try again.
    Busy,
    /// The community feed's API failed, refused, or is not configured (no key).
    Upstream,
    /// The config file does not load: the previous config stays in force.
    Config,
}

/// A successful answer, one variant per command; written as the reply's `data` (the
/// variant's own fields, untagged: the client knows what it asked).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Response {
    /// `ping`: the text `pong`.
    Pong(&'static str),
    Status(Box<StatusData>),
    List(ListData),
    Query(Box<QueryData>),
    Ban(Box<BanData>),
    Unban(UnbanData),
    Import(ImportData),
    Fail2ban(Box<Fail2banData>),
    Sync(Box<crate::feed::pull::PullReport>),
    Check(Box<CheckData>),
    Register(RegisterData),
    Verify(VerifyData),
    Delist(DelistData),
    Reload(ReloadData),
}

/// `reload`: the config now in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadData {
    /// Where it came from.
    pub config: String,
    /// Keys whose change takes a restart (the running daemon keeps their old value).
    pub restart_needed: Vec<String>,
}

/// `status`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusData {
    pub version: String,
    pub pid: u32,
    pub started: Timestamp,
    pub uptime_secs: u64,
    /// Where the config came from.
    pub config: String,
    pub config_loaded: Timestamp,
    /// The last SIGHUP's error, while the old config stays in force.
    pub reload_error: Option<String>,
    pub state_db: String,
    pub schema_version: i64,
    pub firewall: FirewallStatus,
    /// Decisions in force per source.
    pub active: BTreeMap<Source, u64>,
    pub allowlist_entries: usize,
    pub host_addresses: usize,
    /// The followed logs and what detection made of them.
    #[serde(default)]
    pub sources: Vec<SourceStatus>,
    /// Times a log follower thread died (a bug) and was started again.
    #[serde(default)]
    pub follower_restarts: u64,
    pub feed: FeedStatus,
    /// The check service: where it listens and which providers it asks (`None`: off).
    #[serde(default)]
    pub check: Option<CheckStatus>,
}

/// Per-source counters of a followed log, shown by `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceStatus {
    pub source: String,
    pub filters: Vec<String>,
    pub lines: u64,
    pub failures: u64,
    pub bans: u64,
    /// Failures and bans per filter (the metrics' per-filter series).
    #[serde(default)]
    pub per_filter: BTreeMap<String, u64>,
    #[serde(default)]
    pub per_filter_bans: BTreeMap<String, u64>,
    /// Matched lines whose timestamp could not be read (the time of reading is used).
    pub no_timestamp: u64,
    pub not_an_address: u64,
    /// Lines on which a pattern hit the match limit (skipped for that pattern).
    #[serde(default)]
    pub match_limit: u64,
    /// Lines with invalid UTF-8 (read lossily) and with NUL bytes (read as spaces).
    #[serde(default)]
    pub invalid_utf8: u64,
    #[serde(default)]
    pub nul_bytes: u64,
    pub too_long: u64,
    pub rotations: u64,
    /// Lines whose reading panicked inside banshare (a bug): skipped, counted, and the
    /// source goes on.
    #[serde(default)]
    pub crashed: u64,
    /// Lines read since a filter last matched one.
    pub lines_since_match: u64,
    /// Set while the source reads lines that no filter matches for a long time.
    pub warning: Option<String>,
}

/// The check service in `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckStatus {
    pub listen: String,
    pub providers: Vec<String>,
}

/// The community feed in `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FeedStatus {
    pub base_url: String,
    /// Where the API key comes from, or why there is none (the key itself never appears).
    pub key: String,
    /// Whether a client could be built (a usable key).
    pub ready: bool,
    pub reporter_id: Option<String>,
    /// `feed.report`: local bans are queued for reporting.
    pub report: bool,
    pub outbox: crate::store::OutboxStats,
    pub reporter: crate::feed::reporter::ReporterStatus,
    /// `feed.pull`: the live feed is pulled on a schedule.
    pub pull: bool,
    pub last_pull: Option<crate::feed::pull::PullReport>,
    pub last_pull_error: Option<String>,
    pub last_pull_error_at: Option<Timestamp>,
    pub next_pull: Option<Timestamp>,
    /// Pulls since start that applied, and that failed.
    #[serde(default)]
    pub pulls: u64,
    #[serde(default)]
    pub pull_failures: u64,
}

/// `check`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckData {
    pub local: QueryData,
    /// What the feed says; `None` with `lookup_error` set means unknown (never clean).
    pub lookup: Option<crate::feed::wire::Lookup>,
    /// When the lookup was fetched (it may come from the cache).
    pub fetched: Option<Timestamp>,
    pub cached: bool,
    pub lookup_error: Option<String>,
}

/// `fail2ban`: what an event did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fail2banData {
    /// For a ban: the decision and whether it was new, extended or already there.
    pub decision: Option<Decision>,
    pub outcome: Option<Upsert>,
    /// A report was due: queued, unless one for the same address and category was
    /// queued within the cooldown (never for restored bans or private addresses).
    pub report_due: bool,
    /// For an unban: how many decisions were lifted.
    pub lifted: usize,
}

/// `register`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterData {
    pub reporter_id: String,
    pub status: Option<String>,
    pub trust_score: Option<f64>,
}

/// `verify`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyData {
    pub domain: String,
    pub status: String,
    /// The DNS TXT record to create, while pending.
    pub record_name: Option<String>,
    pub record_value: Option<String>,
    pub verified_at: Option<String>,
}

/// `delist`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DelistData {
    pub request_id: Option<String>,
    pub status: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirewallStatus {
    pub backend: String,
    /// Elements as banshare last wrote them (its own view).
    pub elements: Option<usize>,
    /// Elements the kernel holds, read from it for this answer (`None`: dry-run, or
    /// unreadable).
    #[serde(default)]
    pub kernel_elements: Option<usize>,
    /// Batches of changes applied since start (each one kernel transaction).
    pub batches: u64,
    /// Times the kernel's set counters were read since start (at most once a second,
    /// however many `status` and `/metrics` requests come).
    #[serde(default)]
    pub kernel_reads: u64,
    /// What the kernel holds per set, with drop counters (`None`: dry-run, or unreadable).
    pub sets: Option<Vec<crate::enforce::SetStats>>,
    /// The last firewall failure, cleared by the next success.
    pub last_error: Option<String>,
    /// Elements the kernel refused lately, with its message (cleared by a full load
    /// that refuses none); they are not in force.
    #[serde(default)]
    pub refused: Vec<crate::enforce::Refused>,
    /// Set when the firewall worker died or is stuck: nothing reaches the kernel.
    #[serde(default)]
    pub worker_error: Option<String>,
}

/// `list`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListData {
    pub decisions: Vec<Decision>,
}

/// `query`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryData {
    pub ip: IpAddr,
    pub blocked: bool,
    /// Decisions in force whose target contains the address.
    pub active: Vec<Decision>,
    /// Recent lifted or expired decisions covering it, most recent first.
    pub history: Vec<Decision>,
    /// Set when the address can never be blocked, and why.
    pub protected: Option<String>,
}

/// `ban`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BanData {
    pub decision: Decision,
    pub outcome: Upsert,
}

/// `unban`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnbanData {
    pub lifted: Vec<Decision>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let req = Request::Ban {
            target: "203.0.113.7".into(),
            for_secs: Some(60),
            permanent: false,
            reason: None,
            report: false,
            category: None,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"cmd":"ban","target":"203.0.113.7","for_secs":60,"permanent":false}"#
        );
        let back: Request = serde_json::from_str(r#"{"cmd":"list","source":"feed"}"#).unwrap();
        assert_eq!(back, Request::List { source: Some(Source::Feed) });
    }
}

/// `import`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportData {
    pub created: usize,
    pub extended: usize,
    pub unchanged: usize,
    /// Targets the safety rules refused, with the reason.
    pub refused: Vec<String>,
    /// Targets that did not parse.
    pub invalid: Vec<String>,
}
