//! A minimal HTTP/1.1 GET over a fresh loopback connection (`Connection: close`, body read to
//! the end), for the few plain requests the durable-room scenarios make: `/metrics` at the edges
//! of a window, and `GET /v1/rooms/{room}` while timing a start-up. Not on any hot path.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Largest response read (a room's state in the recovery runs is tiny; `/metrics` is ~20 KiB).
const MAX_RESPONSE: usize = 8 << 20;

/// `GET path`: the status code and the body.
///
/// # Errors
/// Connection errors, a response that is not HTTP/1.1 or is over 8 MiB.
pub async fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 << 10];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(io::Error::other("response over 8 MiB"));
        }
    }
    let end = crate::scan::find(&buf, b"\r\n\r\n").ok_or_else(|| io::Error::other("no response head"))?;
    let status = buf
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(crate::scan::parse_u64)
        .map(|(n, _)| n as u16)
        .ok_or_else(|| io::Error::other("not an HTTP/1.1 response"))?;
    let mut body = buf.split_off(end + 4);
    if crate::scan::find(&buf, b"chunked").is_some() {
        body = dechunk(&body);
    }
    Ok((status, body))
}

/// The body of a `Transfer-Encoding: chunked` response (what could be decoded).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = crate::scan::find(b, b"\r\n") {
        let size = std::str::from_utf8(&b[..eol]).ok().and_then(|h| usize::from_str_radix(h.trim(), 16).ok());
        let Some(size) = size.filter(|&n| n > 0 && eol + 2 + n <= b.len()) else { break };
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

/// The sum of every sample of the Prometheus metric `name` (all its label sets) in `text`.
pub fn metric(text: &[u8], name: &str) -> Option<f64> {
    let text = std::str::from_utf8(text).ok()?;
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_over_its_labels() {
        let t = b"# TYPE x counter\nx_total 3\nx_total_more 9\ny{a=\"1\"} 2\ny{a=\"2\"} 2.5\n";
        assert_eq!(metric(t, "x_total"), Some(3.0));
        assert_eq!(metric(t, "y"), Some(4.5));
        assert_eq!(metric(t, "z"), None);
    }

    #[test]
    fn decodes_chunks() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
