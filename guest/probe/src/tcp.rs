//! `tcp-listen` and `tcp-connect`: the vsock echo over TCP (IPv4), with the same protocol,
//! 64 KiB chunks, pattern and result line, so that a transfer over a VM network compares
//! with the same transfer over vsock (scripts/l2-vsock-bench.sh).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};

use crate::vsock::{echo_stream, os_error, send_and_check, timing};
use crate::{ProbeError, clock};

/// Listen on `port` (every IPv4 address) and echo `count` connections, one after the other.
pub(crate) fn listen_echo(port: u16, count: u64) -> Result<String, ProbeError> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        .map_err(|_| os_error("bind"))?;
    println!("KEEL-PROBE tcp-listen port={port} ready=1");
    let _ = std::io::stdout().flush();
    let mut total = 0u64;
    for _ in 0..count {
        let (mut conn, peer) = listener.accept().map_err(|_| os_error("accept"))?;
        let n_conn = echo_stream(&mut conn)?;
        println!(
            "KEEL-PROBE tcp-echo port={port} from={} bytes={n_conn}",
            peer.ip()
        );
        let _ = std::io::stdout().flush();
        total += n_conn;
    }
    Ok(format!(
        "KEEL-PROBE tcp-listen port={port} connections={count} bytes={total}"
    ))
}

/// Connect to `ip`:`port` (trying again for up to `retry_s` seconds while that fails: the
/// listener or the link may not be up yet), send `bytes` of the pattern and read them back.
/// A connection that never succeeds is a result line (`refused=1 errno=N`), as for vsock.
pub(crate) fn connect_echo(
    ip: Ipv4Addr,
    port: u16,
    bytes: u64,
    retry_s: u64,
) -> Result<String, ProbeError> {
    let freq = clock::freq();
    if freq == 0 {
        return Err(ProbeError::NoClock);
    }
    let first = clock::now();
    let conn = loop {
        match TcpStream::connect(SocketAddrV4::new(ip, port)) {
            Ok(c) => break c,
            Err(e) => {
                if (clock::now() - first) / freq >= retry_s {
                    return Ok(format!(
                        "KEEL-PROBE tcp-connect ip={ip} port={port} refused=1 errno={}",
                        e.raw_os_error().unwrap_or(0)
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    };
    let start = clock::now();
    let writer = conn.try_clone().map_err(|_| os_error("dup"))?;
    let (got, bad) = send_and_check(conn, writer, bytes, |w: &TcpStream| {
        let _ = w.shutdown(std::net::Shutdown::Write);
    })?;
    let (ms, mib_per_s) = timing(start, freq, got);
    Ok(format!(
        "KEEL-PROBE tcp-connect ip={ip} port={port} bytes={bytes} echoed={got} mismatched={bad} ms={ms:.1} mib_per_s={mib_per_s:.2}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_over_loopback_is_whole() {
        // The listener on an ephemeral port, echoing one connection in a thread.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            echo_stream(&mut c).unwrap()
        });
        let line = connect_echo(Ipv4Addr::LOCALHOST, port, 200_000, 5).unwrap();
        assert_eq!(server.join().unwrap(), 200_000);
        assert!(
            line.contains(" bytes=200000 echoed=200000 mismatched=0 ms="),
            "{line}"
        );
        assert!(
            line.starts_with("KEEL-PROBE tcp-connect ip=127.0.0.1 port="),
            "{line}"
        );
    }

    #[test]
    fn a_refused_connection_is_a_result_line() {
        // A port that was just free: nothing listens on it.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let line = connect_echo(Ipv4Addr::LOCALHOST, port, 1, 0).unwrap();
        assert!(line.contains(" refused=1 errno="), "{line}");
    }
}
