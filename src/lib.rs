//! banshare: a host agent that bans attackers in the kernel and shares its bans with the
//! WAYSCloud IP Intelligence community feed.
//!
//! # Architecture
//!
//! ```text
//!  log files ──► tail ──► detect ─────────────────┐
//!  fail2ban action / fail2ban.log ──► fail2ban ───┤
//!  banshare ban/unban/import ──► control socket ──┼──► decisions ──► store (SQLite) ──► enforce (nftables | ipset | dry-run)
//!  feed pull (schedule) ──► feed ─────────────────┘                      │
//!                                                                        └──► outbox ──► feed reporter (rate-limited, retried)
//! ```
//!
//! Every block, whatever produced it, is a [`decision::Decision`]. A decision is checked
//! against the [`decision::Guard`] (loopback, link-local, the host's own addresses and the
//! allowlist are never blocked), committed to the [`store`] (the truth about what is
//! blocked), and only then handed to the firewall through the [`enforce::Firewall`] seam
//! (the enforcement). The [`daemon`] owns the store and the firewall, lifts decisions when
//! they expire and answers the CLI over the [`control`] socket.
//!
//! # Layout
//!
//! - [`config`]: `RawConfig` (serde mirror of the TOML file) converted once into `Config`.
//! - [`decision`]: the `Decision` type, sources, target parsing, the allowlist guard.
//! - [`store`]: SQLite schema, migrations and queries.
//! - [`enforce`]: the `Firewall` trait, backend selection, the nftables, ipset and dry-run
//!   backends, and the worker that batches changes into kernel transactions.
//! - [`control`]: the versioned JSON-lines protocol, its server (daemon side) and client.
//! - [`daemon`]: wiring, lifecycle, signals, expiry, pruning, the firewall health check,
//!   and the detection loop over the followed logs.
//! - [`cli`]: clap definitions and the thin client-side commands.
//! - [`clock`]: wall-clock timestamps (unix milliseconds, RFC 3339 on the wire).
//! - [`hostaddr`]: the host's own interface addresses.
//! - [`lines`]: bounded line reading shared by the socket and log readers.
//! - [`detect`]: filters, timestamps, sliding windows; the offline `scan` engine.
//! - [`tail`]: following log files through rotation, truncation and restarts.
//! - [`feed`]: the WAYSCloud community feed: API client, sanitiser, outbox reporter,
//!   live-feed pull (the daemon wires it in `daemon::feed`).
//! - [`fail2ban`]: fail2ban's ban and unban events (the action, its log), jail categories.
//! - [`check`]: the check service's rules and provider clients: each reputation
//!   provider's request and answer, scores combined into graduated verdicts, metrics
//!   (the daemon serves them over HTTP in `daemon::check`, local blocks from
//!   [`enforce::in_force`]).

pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decision;
pub mod detect;
pub mod enforce;
pub mod fail2ban;
pub mod feed;
pub mod hostaddr;
pub mod lines;
pub mod store;
pub mod tail;
