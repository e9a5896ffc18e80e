//! The command line: clap definitions ([`Cli`]) and the thin client-side commands.
//!
//! Every command but `run` and `config check` is a request to the daemon over the
//! control socket ([`crate::control::client`]); this module only parses arguments,
//! validates what it can locally (a bad address fails here, before any connection), and
//! prints the reply as a table or, with `--json`, as JSON for scripts.
//!
//! Exit codes are part of the interface, see [`exit`].

mod commands;
mod fail2ban;
mod feed;
mod output;

pub use output::terminal_safe;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::decision::Source;

pub use commands::execute;

/// Exit codes, documented in the README.
pub mod exit {
    /// Success; for `query`, the address is blocked.
    pub const OK: u8 = 0;
    /// A negative answer: `query` finds no block, `unban` finds nothing to lift.
    pub const NO: u8 = 1;
    /// Bad input: usage, an invalid address, an invalid config.
    pub const BAD_INPUT: u8 = 2;
    /// The daemon is not running.
    pub const NOT_RUNNING: u8 = 3;
    /// Refused by the safety rules (loopback, link-local, own address, allowlist).
    pub const REFUSED: u8 = 4;
    /// Anything else failed (the daemon, the store, the firewall, permissions).
    pub const FAILURE: u8 = 5;
}

/// banshare bans attackers in the kernel and shares its bans with the WAYSCloud community
/// feed.
#[derive(Debug, Parser)]
#[command(name = "banshare", version, propagate_version = true)]
pub struct Cli {
    /// Config file [default: /etc/banshare/banshare.toml, built-in defaults if absent]
    #[arg(long, global = true, env = "BANSHARE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Control socket, overriding the config's `socket`
    #[arg(long, global = true, env = "BANSHARE_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd runs this; needs root for the firewall)
    Run {
        /// Start even though the state database is empty where one existed before
        /// (its contents were lost): every block it held is lifted
        #[arg(long, env = "BANSHARE_NEW_STATE", value_parser = clap::builder::FalseyValueParser::new())]
        new_state: bool,
    },
    /// Show the daemon's health: config, firewall, blocks per source
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List the blocks in force
    List {
        /// Only this source: detect, fail2ban, manual or feed
        #[arg(long, value_name = "SOURCE")]
        source: Option<Source>,
        #[arg(long)]
        json: bool,
    },
    /// Is this address blocked? By what, since and until when? (exit 0 if blocked, 1 if not)
    Query {
        /// An IPv4 or IPv6 address
        ip: String,
        #[arg(long)]
        json: bool,
    },
    /// Block an address or CIDR
    Ban {
        /// Address (203.0.113.7) or network (203.0.113.0/24, 2001:db8::/48)
        target: String,
        #[command(flatten)]
        ban: BanArgs,
        /// Also report it to the community feed (manual bans are not reported otherwise)
        #[arg(long)]
        report: bool,
        /// The report's category [default: other]
        #[arg(long, requires = "report", value_name = "CATEGORY")]
        category: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lift a block of an address or CIDR (exactly as it was banned)
    Unban {
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Bulk-load addresses and CIDRs as manual bans, in one batch
    ///
    /// FILE (or - for stdin) holds one address or CIDR per line (`#` starts a comment),
    /// or the JSON that `banshare list --json` prints. Invalid lines are reported with
    /// their line number and skipped; the rest is imported (exit 2 if any were invalid).
    Import {
        /// The file to read, or - for stdin
        file: PathBuf,
        #[command(flatten)]
        ban: BanArgs,
        #[arg(long)]
        json: bool,
    },
    /// Replay logs offline through the filters: what would be banned (like fail2ban-regex)
    Scan {
        /// Only these filters (repeatable) [default: every filter in the config]
        #[arg(long = "filter", value_name = "NAME")]
        filters: Vec<String>,
        /// Run fail2ban's definition `filter.d/NAME.conf` (under the config's `fail2ban.dir`,
        /// default /etc/fail2ban) with its options, e.g. 'sshd[mode=aggressive]' (repeatable)
        #[arg(long = "fail2ban-filter", value_name = "NAME[OPTIONS]")]
        fail2ban_filters: Vec<String>,
        /// Print each matched line
        #[arg(long)]
        show_matches: bool,
        /// Print each line no filter matched
        #[arg(long)]
        show_missed: bool,
        #[arg(long)]
        json: bool,
        /// Log files to read, - for stdin
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Put the config file in force in the running daemon; returns once it is, or fails
    /// with the config's error (the previous config staying in force)
    Reload {
        #[arg(long)]
        json: bool,
    },
    /// Pull the community feed's live threats now and print what changed
    Sync {
        #[arg(long)]
        json: bool,
    },
    /// Look an address up: local state first, then the community feed (cached)
    Check {
        ip: String,
        #[arg(long)]
        json: bool,
    },
    /// A fail2ban ban or unban (the `banshare` fail2ban action runs this)
    ///
    /// Hands the event to the daemon; when the daemon is not running, writes the decision
    /// and its report to the state database, and the daemon picks them up at its start.
    /// Never waits more than 20 s. Restored bans are never reported again.
    Report {
        #[command(flatten)]
        args: ReportArgs,
        /// Print the report that would be sent (sanitised) and do nothing else
        #[arg(long)]
        dry_run: bool,
    },
    /// Register this host as a reporter with the community feed (stores the reporter id)
    Register {
        /// A name for this reporter (your organisation or host)
        #[arg(long)]
        name: String,
        /// An email address the feed's operators can reach
        #[arg(long)]
        contact: String,
        /// A domain you control, for verification (`banshare verify`)
        #[arg(long)]
        domain: Option<String>,
        /// automated, hybrid or manual
        #[arg(long, default_value = "automated")]
        source_type: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the DNS TXT record that verifies the reporter's domain, and the current status
    Verify {
        /// The domain [default: the one given to `register`]
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Ask the community feed to delist an address you control (reviewed by people)
    Delist {
        ip: String,
        /// Why it should be delisted
        #[arg(long)]
        reason: String,
        /// The hostname that proves control of the address (its PTR or A record)
        #[arg(long)]
        hostname: String,
        #[arg(long)]
        contact: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// What banshare holds in the kernel (runs locally, as root)
    Firewall {
        #[command(subcommand)]
        action: FirewallCommand,
    },
    /// Configuration tools
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// fail2ban tools
    Fail2ban {
        #[command(subcommand)]
        action: Fail2banCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), generated from these definitions
    #[command(hide = true)]
    Manpage,
}

/// How long and why: shared by `ban` and `import`.
#[derive(Debug, clap::Args)]
pub struct BanArgs {
    /// How long: 90s, 10m, 1h, 7d, or "permanent" [default: decisions.manual_bantime]
    #[arg(long = "for", value_name = "DURATION")]
    pub length: Option<String>,
    /// A note kept with the block
    #[arg(long)]
    pub reason: Option<String>,
}

/// A ban event to report, as the fail2ban action passes it.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The banned address
    #[arg(long)]
    pub ip: String,
    /// The fail2ban jail or banshare filter
    #[arg(long)]
    pub jail: String,
    /// Report category [default: from the jail's name]
    #[arg(long)]
    pub category: Option<String>,
    /// Failures that led to the ban
    #[arg(long)]
    pub failures: Option<u32>,
    /// When the ban happened (unix seconds)
    #[arg(long)]
    pub time: Option<f64>,
    /// fail2ban's bantime in seconds (-1: permanent)
    #[arg(long, allow_negative_numbers = true)]
    pub bantime: Option<i64>,
    /// How many times fail2ban banned this address (kept in the comment)
    #[arg(long)]
    pub bancount: Option<u32>,
    /// 1 when fail2ban restored the ban at its start: recorded, never reported again
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub restored: u8,
    /// report: fail2ban blocks, banshare reports; block: banshare blocks too
    #[arg(long, value_enum, default_value = "report")]
    pub mode: crate::fail2ban::Mode,
    /// ban, or unban (fail2ban's actionunban)
    #[arg(long, value_enum, default_value = "ban")]
    pub event: crate::fail2ban::Kind,
    /// The log lines that matched (newline-separated, as fail2ban's `<matches>`)
    #[arg(long)]
    pub matches: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Print banshare's sets in the kernel with their sizes and drop counters
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Remove banshare's nftables table and ipset sets and rules (package removal does this)
    Teardown,
}

#[derive(Debug, Subcommand)]
pub enum Fail2banCommand {
    /// Print the enabled jails of a fail2ban configuration as banshare config: each
    /// jail's filter definition with its options, window and log paths (a comment for
    /// each setting that does not carry over)
    Jails {
        /// fail2ban's configuration directory
        #[arg(long, default_value = "/etc/fail2ban")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the config exactly as `run` does; exit 2 if it is invalid
    Check,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
