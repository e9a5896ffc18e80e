//! Detection: log lines → failures → bans, as fail2ban does it.
//!
//! [`f2b`] reads and runs fail2ban's filter definitions (banshare's [`builtin`] filters
//! are written in the same format and run through the same engine); [`filter`] compiles
//! a config's own `failregex`/`ignoreregex` and holds both kinds behind one [`Filter`];
//! [`time`] reads the timestamps of lines the own patterns match. [`stage`] is the one
//! path from a stream's lines to bans, used by the daemon's followers and by the offline
//! `banshare scan` ([`scan`]) alike.

pub mod builtin;
pub mod f2b;
pub mod filter;
pub mod scan;
pub mod stage;
pub mod time;

pub use filter::{Failure, Filter, FilterError, FilterSet, FilterSpec, Hit};
pub use stage::{Ban, EVIDENCE_LINES, Escalation, Offences, Stage, Timing};
