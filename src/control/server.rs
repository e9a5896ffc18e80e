//! The daemon side of the control socket: binding (replacing a stale socket file),
//! permissions, the accept loop and the per-connection request loop.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use super::protocol::{
    ErrorBody, ErrorCode, MAX_CONNECTIONS, MAX_IMPORT, MAX_LINE, MAX_TARGET, Reply, Request, Response, VERSION,
};

/// What serves requests: the daemon's engine. Called on a blocking thread.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Result<Response, ErrorBody>;
}

/// Binds the control socket at `path` with mode 0660 and group `group` (when that group
/// exists). A socket file left by a crashed daemon is replaced; one with a live listener
/// behind it is an error (another daemon uses this socket path).
pub fn bind(path: &Path, group: &str) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket (a second banshare daemon?)",
                ));
            }
            tracing::info!(path = %path.display(), "replacing a stale control socket at {}", path.display());
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket; refusing to replace it",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Ok(Some(g)) = nix::unistd::Group::from_name(group) {
        nix::unistd::chown(path, None, Some(g.gid)).map_err(io::Error::from)?;
    }
    Ok(listener)
}

/// Accepts connections until `shutdown` turns true, then waits for the connections in
/// flight to finish their current request.
pub async fn serve(listener: UnixListener, handler: Arc<dyn Handler>, mut shutdown: watch::Receiver<bool>) {
    // Each connection task holds a clone of `done_tx`; when all are dropped, `done_rx`
    // yields None and every request in flight has been answered.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let for_connections = shutdown.clone();
    // At most MAX_CONNECTIONS at once: a local user holding thousands of connections
    // would otherwise take the descriptors the firewall tools need.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // One streamed import read at a time: each may hold a million targets in memory.
    let imports = Arc::new(tokio::sync::Semaphore::new(1));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        tokio::spawn(refuse(stream));
                        continue;
                    };
                    let handler = Arc::clone(&handler);
                    let shutdown = for_connections.clone();
                    let done = done_tx.clone();
                    let imports = Arc::clone(&imports);
                    tokio::spawn(async move {
                        if let Err(error) = connection(stream, handler, imports, shutdown).await {
                            tracing::debug!(%error, "control connection ended with an error");
                        }
                        drop(slot);
                        drop(done);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "control socket accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(done_tx);
    // A request stuck in the store or the firewall must not keep the daemon from
    // stopping: what it had not committed is rolled back, nothing acknowledged is lost.
    if tokio::time::timeout(DRAIN_TIMEOUT, done_rx.recv()).await.is_err() {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping without them");
    }
}

/// Answers a connection past the cap with one error line and closes it.
async fn refuse(mut stream: UnixStream) {
    let reply = Reply::err(ErrorBody::new(
        ErrorCode::Busy,
        format!("the daemon already serves {MAX_CONNECTIONS} connections; try again"),
    ));
    if let Ok(mut line) = serde_json::to_vec(&reply) {
        line.push(b'\n');
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(&line)).await;
    }
}

/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn connection(
    stream: UnixStream,
    handler: Arc<dyn Handler>,
    imports: Arc<tokio::sync::Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        let mut permit = None;
        let read = tokio::select! {
            read = read_line(&mut reader, &mut line, MAX_LINE) => read?,
            _ = stopped(&mut shutdown) => return Ok(()),
        };
        let reply = match read {
            Line::Eof => return Ok(()),
            Line::TooLong => Reply::err(ErrorBody::new(
                ErrorCode::TooLarge,
                format!("request line longer than {MAX_LINE} bytes; discarded"),
            )),
            Line::Complete if line.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Complete => match parse_request(&line) {
                Ok(Request::Import { lines: Some(n), .. }) if n > MAX_IMPORT => {
                    // The lines that follow cannot be skipped safely: end the connection.
                    let reply = Reply::err(ErrorBody::new(
                        ErrorCode::TooLarge,
                        format!("an import carries at most {MAX_IMPORT} targets, not {n}; split the list"),
                    ));
                    return write_reply(&mut write, &reply).await;
                }
                Ok(mut request) => {
                    if let Request::Import { lines: Some(n), targets, .. } = &mut request {
                        // Held until the import is answered.
                        permit = Some(imports.acquire().await);
                        match read_targets(&mut reader, &mut line, *n).await? {
                            Some(read) => *targets = read,
                            None => return Ok(()), // the client went away mid-list
                        }
                    }
                    let handler = Arc::clone(&handler);
                    let result = tokio::task::spawn_blocking(move || handler.handle(request)).await;
                    match result {
                        Ok(Ok(response)) => Reply::of(&response),
                        Ok(Err(e)) => Reply::err(e),
                        Err(join) => {
                            Reply::err(ErrorBody::new(ErrorCode::Internal, format!("request handler failed: {join}")))
                        }
                    }
                }
                Err(e) => Reply::err(e),
            },
        };
        write_reply(&mut write, &reply).await?;
        drop(permit);
    }
}

async fn write_reply(write: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> io::Result<()> {
    let mut out = serde_json::to_vec(reply).unwrap_or_else(|_| b"{\"v\":1,\"ok\":false}".to_vec());
    out.push(b'\n');
    write.write_all(&out).await
}

/// The `n` target lines of a streamed import. A line longer than [`MAX_TARGET`] is kept
/// as a marker the import reports as invalid. `None` when the stream ends before `n`.
async fn read_targets(
    reader: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
    n: usize,
) -> io::Result<Option<Vec<String>>> {
    let mut targets = Vec::with_capacity(n);
    while targets.len() < n {
        match read_line(reader, buf, MAX_TARGET).await? {
            Line::Eof => return Ok(None),
            Line::TooLong => targets.push(format!("(a line longer than {MAX_TARGET} bytes)")),
            Line::Complete => targets.push(String::from_utf8_lossy(buf).trim().to_string()),
        }
    }
    Ok(Some(targets))
}

/// Parses one request line: JSON object, supported `v`, known `cmd`, valid fields.
pub fn parse_request(line: &[u8]) -> Result<Request, ErrorBody> {
    let bad = |m: String| ErrorBody::new(ErrorCode::BadRequest, m);
    let value: Value = serde_json::from_slice(line).map_err(|e| bad(format!("request is not valid JSON: {e}")))?;
    let Value::Object(mut map) = value else {
        return Err(bad("request must be a JSON object like {\"v\":1,\"cmd\":\"status\"}".into()));
    };
    match map.remove("v") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v > u64::from(VERSION)) => {
            return Err(ErrorBody::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {n} is newer than this daemon's ({VERSION}); upgrade the daemon or use a matching banshare CLI"
                ),
            ));
        }
        Some(Value::Number(n)) if n.as_u64().is_some() => {}
        Some(other) => {
            return Err(bad(format!("`v` must be a protocol version number, got {other}")));
        }
        None => {
            return Err(bad(format!("missing protocol version `v` (this daemon speaks {VERSION})")));
        }
    }
    if !map.get("cmd").is_some_and(Value::is_string) {
        return Err(bad("missing `cmd` (a command name such as \"status\")".into()));
    }
    serde_json::from_value(Value::Object(map)).map_err(|e| bad(format!("bad request: {e}")))
}

enum Line {
    Complete,
    TooLong,
    Eof,
}

/// Reads up to and including `\n` into `buf`, holding at most `max` bytes: a longer line
/// is consumed to its end and reported as [`Line::TooLong`], so the stream stays in step.
async fn read_line(r: &mut (impl AsyncBufRead + Unpin), buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(match (too_long, buf.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Eof,
                (false, false) => Line::Complete,
            });
        }
        let (take, done) = crate::lines::take(chunk, buf, max, &mut too_long);
        r.consume(take);
        if done {
            return Ok(if too_long { Line::TooLong } else { Line::Complete });
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone): the shutdown signal every
/// long-running task of the daemon waits on beside its work.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here, not in the caller's future.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> ErrorBody {
        parse_request(line.as_bytes()).unwrap_err()
    }

    #[test]
    fn malformed_requests_get_precise_errors() {
        assert!(err("hello").message.starts_with("request is not valid JSON"));
        assert!(err("[1,2]").message.starts_with("request must be a JSON object"));
        assert!(err(r#"{"cmd":"status"}"#).message.starts_with("missing protocol version"));
        assert_eq!(err(r#"{"v":2,"cmd":"status"}"#).code, ErrorCode::UnsupportedVersion);
        assert!(err(r#"{"v":"one","cmd":"status"}"#).message.contains("`v` must be"));
        assert!(err(r#"{"v":1}"#).message.starts_with("missing `cmd`"));
        let e = err(r#"{"v":1,"cmd":"explode"}"#);
        assert!(e.message.contains("unknown variant `explode`"), "{}", e.message);
        let e = err(r#"{"v":1,"cmd":"ban"}"#);
        assert!(e.message.contains("missing field `target`"), "{}", e.message);
        let e = err(r#"{"v":1,"cmd":"ban","target":"1.2.3.4","forever":true}"#);
        assert!(e.message.contains("unknown field `forever`"), "{}", e.message);
        assert_eq!(parse_request(br#"{"v":1,"cmd":"status"}"#).unwrap(), Request::Status);
    }

    #[tokio::test]
    async fn over_long_lines_are_skipped_and_the_stream_stays_in_step() {
        let input = format!("{}\nshort\n", "x".repeat(100));
        let mut r = BufReader::with_capacity(16, input.as_bytes());
        let mut buf = Vec::new();
        assert!(matches!(read_line(&mut r, &mut buf, 50).await.unwrap(), Line::TooLong));
        assert!(matches!(read_line(&mut r, &mut buf, 50).await.unwrap(), Line::Complete));
        assert_eq!(buf, b"short");
        assert!(matches!(read_line(&mut r, &mut buf, 50).await.unwrap(), Line::Eof));
    }
}
