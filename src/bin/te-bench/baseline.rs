//! The physical baseline: one raw TCP stream on loopback, same block size.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Bytes per second of one loopback TCP stream writing `block`-sized chunks
/// for `secs` seconds.
pub fn raw_tcp_stream(block: usize, secs: f64) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; block.max(1 << 16)];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let buf = vec![0x5au8; block];
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    while start.elapsed() < limit {
        s.write_all(&buf)?;
        sent += block as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let received = reader
        .join()
        .map_err(|_| std::io::Error::other("reader panicked"))??;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(received.min(sent) as f64 / elapsed)
}
