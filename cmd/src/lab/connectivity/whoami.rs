//! The test pods' server and its probe: TCP echo that also says who answered. A probe of a
//! service frontend must tell which backend it reached (a global service has to reach both
//! clusters), and a probe of a pod must be answered by that pod and not by whatever holds its
//! address; upstream's echo pods answer with their pod name for the same reason.
//!
//! The server reads one line, sends it back followed by its name and a newline, and closes
//! the connection. It stays compatible with `cilium lab echo-client`, which only checks that
//! its probe comes back first.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::lab::echo::{EchoError, PROBE};

/// The longest line the server reads before it answers anyway.
const MAX_LINE: usize = 4096;
/// How long the server waits for a client's line.
const IDLE: Duration = Duration::from_secs(10);

/// Serves on `addr` until the process is killed, one thread per connection, answering as
/// `name`.
pub fn serve(addr: SocketAddr, name: &str) -> Result<(), EchoError> {
    let listener = TcpListener::bind(addr).map_err(|source| EchoError::Listen { addr, source })?;
    loop {
        let (conn, peer) = listener
            .accept()
            .map_err(|source| EchoError::Accept { addr, source })?;
        let name = name.to_owned();
        thread::spawn(move || {
            if let Err(e) = answer(conn, &name) {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

fn answer(mut conn: TcpStream, name: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IDLE))?;
    let mut line = Vec::new();
    let mut buf = [0u8; 512];
    while !line.contains(&b'\n') && line.len() < MAX_LINE {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    line.extend_from_slice(name.as_bytes());
    line.push(b'\n');
    conn.write_all(&line)
}

/// Connects to `addr` within `timeout`, sends the lab's probe line and reads the answer: how
/// long the exchange took and the name of the pod that answered.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Result<(Duration, String), EchoError> {
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
    let mut answer = Vec::new();
    conn.take(MAX_LINE as u64)
        .read_to_end(&mut answer)
        .map_err(exchange)?;
    let wrong = |answer: &[u8]| EchoError::WrongEcho {
        addr,
        answer: String::from_utf8_lossy(answer).into_owned(),
    };
    let name = answer
        .strip_prefix(PROBE)
        .map(|rest| String::from_utf8_lossy(rest).trim().to_owned())
        .filter(|name| !name.is_empty() && !name.contains('\n'))
        .ok_or_else(|| wrong(&answer))?;
    Ok((started.elapsed(), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_addr() -> SocketAddr {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn start(name: &'static str) -> SocketAddr {
        let addr = free_addr();
        thread::spawn(move || serve(addr, name));
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "server never listened");
            thread::sleep(Duration::from_millis(10));
        }
        addr
    }

    #[test]
    fn the_probe_learns_who_answered_and_the_lab_client_still_works() {
        let addr = start("echo-same-node");
        let (_, name) = probe(addr, Duration::from_secs(2)).expect("answer");
        assert_eq!(name, "echo-same-node");
        crate::lab::echo::probe(addr, Duration::from_secs(2)).expect("plain echo client");
    }

    #[test]
    fn a_plain_echo_server_is_not_taken_for_a_test_pod() {
        let addr = free_addr();
        thread::spawn(move || crate::lab::echo::serve(addr));
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "server never listened");
            thread::sleep(Duration::from_millis(10));
        }
        let err = probe(addr, Duration::from_millis(300)).expect_err("no name");
        assert!(
            matches!(
                err,
                EchoError::WrongEcho { .. } | EchoError::Exchange { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let err = probe(free_addr(), Duration::from_millis(300)).expect_err("closed port");
        assert!(matches!(err, EchoError::Connect { .. }), "{err}");
    }
}
