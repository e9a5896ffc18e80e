//! The client side of the control socket, blocking (the CLI needs no runtime).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::protocol::{ErrorBody, Reply, Request, VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon behind the socket path.
    #[error("the daemon is not running (no listener on {})", socket.display())]
    NotRunning { socket: PathBuf },
    #[error("permission denied on {}: run as root or as a member of the socket's group", socket.display())]
    PermissionDenied { socket: PathBuf },
    #[error("control socket {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon answered something this client does not understand.
    #[error("unexpected reply from the daemon: {0}")]
    Protocol(String),
    /// The daemon refused or failed the request.
    #[error("{0}")]
    Daemon(ErrorBody),
}

/// A connection to the daemon.
pub struct Client {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the daemon; every later read and write gives up after `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning { socket: socket.to_path_buf() }
            }
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { socket: socket.to_path_buf() },
            _ => ClientError::Io { socket: socket.to_path_buf(), source: e },
        })?;
        let io_err = |source| ClientError::Io { socket: socket.to_path_buf(), source };
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        Ok(Client { socket: socket.to_path_buf(), reader: BufReader::new(stream), writer })
    }

    /// Sends one request and waits for its reply.
    pub fn call(&mut self, request: &Request) -> Result<serde_json::Value, ClientError> {
        self.call_with_lines(request, &[])
    }

    /// Sends one request followed by `lines` (a streamed import's targets, one per line)
    /// and returns the reply's data.
    pub fn call_with_lines(&mut self, request: &Request, lines: &[String]) -> Result<serde_json::Value, ClientError> {
        let mut value = serde_json::to_value(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("v".into(), VERSION.into());
        }
        let mut line = value.to_string();
        line.push('\n');
        for l in lines {
            line.push_str(l);
            line.push('\n');
        }
        let reply = self.round_trip(line.as_bytes())?;
        match (reply.ok, reply.data, reply.error) {
            (true, data, _) => Ok(data.unwrap_or(serde_json::Value::Null)),
            (false, _, Some(e)) => Err(ClientError::Daemon(e)),
            (false, _, None) => Err(ClientError::Protocol("error reply without an error".into())),
        }
    }

    /// Sends one request and decodes the reply's data as `T`.
    pub fn call_as<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        let data = self.call(request)?;
        serde_json::from_value(data).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// [`Client::call_with_lines`], the reply's data decoded as `T`.
    pub fn call_as_with_lines<T: DeserializeOwned>(
        &mut self,
        request: &Request,
        lines: &[String],
    ) -> Result<T, ClientError> {
        let data = self.call_with_lines(request, lines)?;
        serde_json::from_value(data).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Writes raw bytes (one or more lines) and reads one reply line. Used by `call`, and
    /// by tests that need to send what a well-behaved client never would.
    pub fn round_trip(&mut self, raw: &[u8]) -> Result<Reply, ClientError> {
        let io_err = |source| ClientError::Io { socket: self.socket.clone(), source };
        self.writer.write_all(raw).map_err(io_err)?;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(io_err)?;
        if n == 0 {
            return Err(ClientError::Protocol("the daemon closed the connection".into()));
        }
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {line:?}")))
    }
}
