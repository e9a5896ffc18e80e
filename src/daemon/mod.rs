//! The daemon: wiring, lifecycle and signals.
//!
//! [`start`] brings the daemon up in order: lock the state directory, open the store,
//! pick the firewall backend, reconcile the kernel with the store, bind the control
//! socket, and only then tell systemd it is ready. It returns a [`DaemonHandle`], which
//! is all an in-process test needs; [`run`] adds the signals (SIGTERM/SIGINT drain and
//! exit, SIGHUP reloads the config) for `banshare run`.
//!
//! Shutdown order: stop accepting, answer the requests in flight (each one commits
//! before it replies), stop the timers, remove the socket file, release the lock.
//!
//! Rooms: `engine` (the operations on the [`crate::ledger::Ledger`], reload, upkeep),
//! `requests` (the control socket's commands and their typed answers), `fail2ban`,
//! `feed` and `check` (those services' runtime), `follow` (the log followers).

mod check;
mod engine;
mod fail2ban;
mod feed;
mod follow;
mod lock;
mod notify;
mod requests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use engine::Engine;
pub use lock::LockError;
pub use notify::notify;

use crate::clock::Timestamp;
use crate::config::Config;
use crate::control;
use crate::control::server::stopped;
use crate::decision::Guard;
use crate::enforce::{self, Enforcer, FirewallError, FirewallHandle};
use crate::hostaddr;
use crate::store::{Empty, Store, StoreError};

/// The longest the expiry loop sleeps without looking at the store again.
const EXPIRY_IDLE: Duration = Duration::from_secs(60);
/// How often the host's addresses are re-read.
const MAINTAIN_EVERY: Duration = Duration::from_secs(30);
/// How often old decisions are pruned (every Nth maintenance round: hourly).
const PRUNE_EVERY_ROUNDS: u32 = 120;
/// How often the firewall is checked for banshare's table (restored within 10 s of
/// `nft flush ruleset`).
const FIREWALL_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Every Nth firewall check is a full reconcile (hourly): re-asserts kernel timeouts of
/// long bans (capped in the kernel) and removes drift.
const FULL_RECONCILE_EVERY_ROUNDS: u32 = 720;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("firewall: {0}")]
    Firewall(#[from] FirewallError),
    #[error("control socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Runtime(String),
}

/// A running daemon.
pub struct DaemonHandle {
    engine: Arc<Engine>,
    /// The log followers (plain threads: they block on inotify and journalctl).
    followers: Option<follow::Supervisor>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    socket: PathBuf,
    lock: lock::StateLock,
    /// Set by a loop that found the daemon unable to work (a dead or stuck firewall
    /// worker): `run` exits non-zero so that systemd restarts it.
    fatal: watch::Receiver<Option<String>>,
}

impl DaemonHandle {
    /// The engine, for in-process callers.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Resolves with the reason once the daemon cannot go on (a dead or stuck firewall
    /// worker): `run` then exits non-zero so that systemd restarts it.
    pub async fn failed(&mut self) -> String {
        match self.fatal.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Reloads the config, as SIGHUP does.
    pub async fn reload(&self) {
        let engine = Arc::clone(&self.engine);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = engine.reload(); // logged, and shown by `status`
        })
        .await;
    }

    /// Drains and stops the daemon; returns once every task has finished.
    pub async fn shutdown(mut self) {
        // Stop reading logs first; their last checkpoints are saved before the store closes.
        if let Some(followers) = self.followers.take() {
            let _ = tokio::task::spawn_blocking(move || followers.stop()).await;
        }
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        let engine = Arc::clone(&self.engine);
        let _ = tokio::task::spawn_blocking(move || engine.checkpoint()).await;
        if let Err(error) = std::fs::remove_file(&self.socket) {
            tracing::warn!(%error, path = %self.socket.display(), "cannot remove the control socket: {error}");
        }
        drop(self.lock);
        tracing::info!("banshare stopped");
    }
}

/// Starts the daemon and returns once it is ready (socket listening, firewall
/// reconciled).
pub async fn start(config: Config) -> Result<DaemonHandle, DaemonError> {
    start_with(config, Empty::Refuse).await
}

/// [`start`], saying how an empty state database in a directory that held one is
/// treated (`banshare run --new-state` accepts it).
pub async fn start_with(config: Config, empty: Empty) -> Result<DaemonHandle, DaemonError> {
    let state_dir = config.state_dir.clone();
    // Everything the daemon creates is private unless it says otherwise (the sockets set
    // their own modes), whatever umask it was started with.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    for path in crate::store::secure_state_dir(&state_dir)? {
        tracing::warn!(path = %path.display(), "{} made private (it was readable by others)", path.display());
    }
    let lock = lock::acquire(&state_dir)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let store = Store::open_checked(&config.state_db(), empty)?;
    store.defer_checkpoints()?;
    let host = hostaddr::host_addresses().unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read this host's addresses: {error}");
        Vec::new()
    });
    let backend = enforce::select(config.firewall.backend, config.firewall.options, &config.state_dir)?;
    let socket = config.socket.clone();
    let group = config.socket_group.clone();
    let origin = config.origin();
    let guard = Guard::new(config.allowlist.clone(), host.clone());
    let firewall = FirewallHandle::spawn(Enforcer::new(backend, guard));
    let engine = Arc::new(Engine::new(config, store, firewall, host));

    let startup = Arc::clone(&engine);
    tokio::task::spawn_blocking(move || startup.startup(Timestamp::now()))
        .await
        .map_err(|e| DaemonError::Runtime(e.to_string()))??;

    let listener = control::server::bind(&socket, &group)
        .map_err(|source| DaemonError::Socket { path: socket.clone(), source })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (fatal_tx, fatal) = watch::channel(None);
    let mut tasks = JoinSet::new();
    tasks.spawn(control::server::serve(
        listener,
        engine.clone() as Arc<dyn control::server::Handler>,
        shutdown_rx.clone(),
    ));
    tasks.spawn(expiry_loop(Arc::clone(&engine), shutdown_rx.clone()));
    tasks.spawn(maintenance_loop(Arc::clone(&engine), shutdown_rx.clone()));
    tasks.spawn(firewall_loop(Arc::clone(&engine), shutdown_rx.clone(), fatal_tx));
    tasks.spawn(feed::report_loop(Arc::clone(&engine), shutdown_rx.clone()));
    if let Some(listen) = engine.config().check.listen.clone() {
        match check::bind(&listen).and_then(|bound| check::spawn(Arc::clone(&engine), bound, shutdown_rx.clone())) {
            Ok(thread) => {
                tracing::info!(?listen, "check service listening on {listen:?}");
                tasks.spawn(async move {
                    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                });
            }
            Err(error) => tracing::error!(%error, ?listen, "the check service cannot listen: {error}; it is off"),
        }
    }
    tasks.spawn(feed::pull_loop(Arc::clone(&engine), shutdown_rx));

    let followers = Some(follow::Supervisor::spawn(Arc::clone(&engine)));

    tracing::info!(config = %origin, socket = %socket.display(), "banshare ready (config {origin}, control socket {})", socket.display());
    notify("READY=1\nSTATUS=ready");
    Ok(DaemonHandle { engine, followers, shutdown, tasks, socket, lock, fatal })
}

/// `banshare run`: starts the daemon and serves until SIGTERM or SIGINT; SIGHUP reloads.
pub async fn run(config: Config, empty: Empty) -> Result<(), DaemonError> {
    let signal_err = |e: std::io::Error| DaemonError::Runtime(format!("cannot install signal handlers: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let mut hup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let mut handle = start_with(config, empty).await?;
    let mut fatal = None;
    loop {
        tokio::select! {
            reason = handle.failed() => {
                fatal = Some(reason);
                break;
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                notify("RELOADING=1");
                handle.reload().await;
                notify("READY=1");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping: finishing requests in flight");
    notify("STOPPING=1");
    handle.shutdown().await;
    match fatal {
        Some(reason) => {
            Err(DaemonError::Runtime(format!("{reason}; exiting so that the service manager restarts banshare")))
        }
        None => Ok(()),
    }
}

/// Lifts decisions as they expire: sleeps until the next expiry (or a new decision, or
/// at most [`EXPIRY_IDLE`]).
async fn expiry_loop(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let e = Arc::clone(&engine);
        let next = match tokio::task::spawn_blocking(move || e.expire_due(Timestamp::now())).await {
            Ok(Ok(next)) => next,
            Ok(Err(error)) => {
                tracing::error!(%error, "expiring decisions failed: {error}; retrying");
                Some(Timestamp::now().plus(Duration::from_secs(5)))
            }
            Err(_) => return,
        };
        let wait = next.map_or(EXPIRY_IDLE, |t| Timestamp::now().until(t).min(EXPIRY_IDLE));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = engine.expiry_wake.notified() => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Re-reads the host's addresses every [`MAINTAIN_EVERY`] and prunes hourly.
async fn maintenance_loop(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let mut round: u32 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(MAINTAIN_EVERY) => {}
            _ = stopped(&mut shutdown) => return,
        }
        round = round.wrapping_add(1);
        let e = Arc::clone(&engine);
        let prune = round % PRUNE_EVERY_ROUNDS == 1;
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || e.maintain(Timestamp::now(), prune)).await {
            tracing::error!(%error, "maintenance failed: {error}");
        }
    }
}

/// Checks the firewall every [`FIREWALL_CHECK_EVERY`], reconciling fully every hour. A
/// dead or stuck worker is fatal: nothing would reach the kernel again.
async fn firewall_loop(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>, fatal: watch::Sender<Option<String>>) {
    let mut round: u32 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FIREWALL_CHECK_EVERY) => {}
            _ = stopped(&mut shutdown) => return,
        }
        if let Some(problem) = engine.firewall_problem() {
            tracing::error!("{problem}");
            let _ = fatal.send(Some(problem));
            return;
        }
        round = round.wrapping_add(1);
        let full = round.is_multiple_of(FULL_RECONCILE_EVERY_ROUNDS);
        let e = Arc::clone(&engine);
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || e.check_firewall(Timestamp::now(), full)).await {
            tracing::error!(%error, "firewall check failed: {error}");
        }
    }
}
