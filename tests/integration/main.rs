//! banshare's integration tests, one binary so they build and link once.
//!
//! Each test gets its own temporary state directory and socket; the daemon runs either
//! in-process ([`support::Env::start_in_process`]) or as a real `banshare run` process
//! when the test needs signals or a hard kill.

// Tests drive real programs (ip, nft, the banshare binary) directly.
#![allow(clippy::disallowed_types)]

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod check;
mod daemon;
mod detect;
mod enforcement;
mod fail2ban;
mod fail2ban_corpus;
mod fail2ban_filters;
mod feed;
mod feed_reporter;
mod firewall;
mod fuzz;
mod hostile;
mod layout;
mod scan;
mod web;
