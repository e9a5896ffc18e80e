//! The control socket: how the CLI (and the fail2ban hook) talk to the daemon.
//!
//! Versioned JSON lines over a Unix socket ([`protocol`]): each request is one line
//! `{"v":1,"cmd":"ban",...}`, each reply one line `{"v":1,"ok":true,"data":...}` or
//! `{"v":1,"ok":false,"error":{"code":...,"message":...}}`. Anything malformed, unknown,
//! too long or from a newer protocol gets an error reply on the same connection, never a
//! hang or a dropped connection.
//!
//! [`server`] runs in the daemon and hands typed [`protocol::Request`]s to a
//! [`server::Handler`] (the daemon's engine), which answers a typed
//! [`protocol::Response`]; [`client`] is the blocking side used by the CLI.

pub mod client;
pub mod protocol;
pub mod server;
