//! The lab's TCP echo server and its client probe (`cilium lab echo-server`, `cilium lab
//! echo-client`). The external namespace runs the server as "the world"; pods run either end
//! through `cilium lab pod exec`, so the lab needs no tools beyond the `cilium` binary.
//!
//! The server echoes every byte back; a request that starts like HTTP (`GET `, `HEAD `) gets a
//! short HTTP/1.0 answer instead, so `curl` works against it too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// What the client sends and expects back.
pub const PROBE: &[u8] = b"cilium-lab-probe\n";
/// The body of the HTTP answer.
pub const HTTP_BODY: &str = "cilium-lab echo-server\n";

/// How long a connection may stay idle before the server closes it.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot accept on {addr}: {source}")]
    Accept {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr} within {timeout:?}: {source}")]
    Connect {
        addr: SocketAddr,
        timeout: Duration,
        source: std::io::Error,
    },
    #[error("no echo from {addr}: {source}")]
    Exchange {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} answered {answer:?} instead of the probe")]
    WrongEcho { addr: SocketAddr, answer: String },
}

/// Serves on `addr` until the process is killed, one thread per connection.
pub fn serve(addr: SocketAddr) -> Result<(), EchoError> {
    let listener = TcpListener::bind(addr).map_err(|source| EchoError::Listen { addr, source })?;
    tracing::info!(%addr, "echo server listening");
    loop {
        let (conn, peer) = listener
            .accept()
            .map_err(|source| EchoError::Accept { addr, source })?;
        tracing::info!(%peer, "connection");
        thread::spawn(move || {
            if let Err(e) = echo(conn) {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

fn echo(mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IDLE))?;
    let mut buf = [0u8; 4096];
    let mut first = true;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let data = buf.get(..n).unwrap_or_default();
        if first && (data.starts_with(b"GET ") || data.starts_with(b"HEAD ")) {
            let answer = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{HTTP_BODY}",
                HTTP_BODY.len()
            );
            return conn.write_all(answer.as_bytes());
        }
        first = false;
        conn.write_all(data)?;
    }
}

/// Connects to `addr` within `timeout`, sends [`PROBE`] and checks the echo; returns how long
/// the exchange took.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Result<Duration, EchoError> {
    let started = Instant::now();
    let mut conn =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| EchoError::Connect {
            addr,
            timeout,
            source,
        })?;
    let exchange = |source| EchoError::Exchange { addr, source };
    conn.set_read_timeout(Some(timeout)).map_err(exchange)?;
    conn.write_all(PROBE).map_err(exchange)?;
    let mut answer = vec![0u8; PROBE.len()];
    conn.read_exact(&mut answer).map_err(exchange)?;
    if answer != PROBE {
        return Err(EchoError::WrongEcho {
            addr,
            answer: String::from_utf8_lossy(&answer).into_owned(),
        });
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_server() -> SocketAddr {
        // Port 0 finds a free port; the server then binds it again, so parallel tests differ.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        thread::spawn(move || serve(addr));
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "server never listened");
            thread::sleep(Duration::from_millis(10));
        }
        addr
    }

    #[test]
    fn probe_gets_its_echo_and_http_gets_an_answer() {
        let addr = start_server();
        probe(addr, Duration::from_secs(2)).expect("echo");
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.0 200 OK"), "{answer}");
        assert!(answer.ends_with(HTTP_BODY), "{answer}");
    }

    #[test]
    fn probe_of_a_closed_port_fails_with_connect() {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let err = probe(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(500),
        )
        .expect_err("nothing listens");
        assert!(matches!(err, EchoError::Connect { .. }), "{err}");
    }
}
