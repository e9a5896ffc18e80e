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
//! Every block, whatever produced it, is a [`decision::Decision`], and every one is made
//! or lifted by the [`ledger`], the one owner of decide, commit and enforce: it checks the
//! [`decision::Guard`] (loopback, link-local, the host's own addresses and the allowlist
//! are never blocked), commits to the [`store`] (the truth about what is blocked), and
//! hands the change to the firewall through the [`enforce::Firewall`] seam (the
//! enforcement) in commit order, then tells the caller whether the kernel took it. The
//! [`daemon`] wires the ledger to its sources, lifts decisions when they expire and
//! answers the CLI over the [`control`] socket.
//!
//! The modules form a graph without cycles (a test reads `src/` to keep it so): `cli`
//! and `daemon` on top; `config` below them; then `control`, `check`, `ledger`,
//! `fail2ban`, `feed`, `enforce`, `store`, `tail`, `detect`; `decision`, `clock`,
//! `lines` and `hostaddr` at the bottom. Nothing below `config` reads the config file's
//! types except its own section's settings, which live beside the code that uses them.
//!
//! # Layout
//!
//! - [`config`]: `RawConfig` (serde mirror of the TOML file) converted once into `Config`.
//! - [`decision`]: the `Decision` type, sources, target parsing, ban lengths, the
//!   allowlist guard.
//! - [`ledger`]: decide, commit, enforce: the one owner of what is blocked.
//! - [`store`]: SQLite schema, migrations and queries.
//! - [`enforce`]: the `Firewall` trait, backend selection, the nftables, ipset and dry-run
//!   backends, and the worker that batches changes into kernel transactions.
//! - [`control`]: the versioned JSON-lines protocol (typed requests and responses), its
//!   server (daemon side) and client.
//! - [`daemon`]: wiring, lifecycle, signals, expiry, pruning, the firewall health check,
//!   the socket's requests, and the detection loop over the followed logs.
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
pub mod ledger;
pub mod lines;
pub mod store;
pub mod tail;
