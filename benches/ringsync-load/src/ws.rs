//! A minimal WebSocket client: the HTTP/1.1 upgrade, frame parsing, and masked client frames
//! (plus the unmasked frame a server sends, for `floor`).
//!
//! Written against RFC 6455 directly rather than through a WebSocket library, so that thousands
//! of connections cost one `TcpStream` each and no per-connection buffer until one is needed
//! (the group task reads every socket into one shared scratch buffer). Client frames are masked
//! with the all-zero key, which RFC 6455 allows (the key must merely be present); the server
//! still runs its unmasking pass, so its cost is what a browser's frames would cost.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xa;

/// The RFC 6455 sample key and the accept value the server must answer with.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Opens a TCP connection to `addr` and upgrades `path` (with its query) to a WebSocket.
/// Returns the stream and any bytes read past the response head (usually the `welcome`).
/// `rcvbuf` caps the socket's receive buffer (set before connecting, so the TCP window
/// stays small): a slow reader then pushes back on the server instead of on the kernel.
///
/// # Errors
/// Connection errors, a non-101 answer, or a response head over 16 KiB.
pub async fn connect(addr: SocketAddr, path: &str, rcvbuf: Option<u32>) -> io::Result<(TcpStream, Vec<u8>)> {
    let mut stream = match rcvbuf {
        None => TcpStream::connect(addr).await?,
        Some(bytes) => {
            let s = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            s.set_recv_buffer_size(bytes)?;
            s.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if buf.len() > 16 << 10 {
            return Err(io::Error::other("upgrade response head over 16 KiB"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the upgrade"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = crate::scan::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        return Err(io::Error::other(format!("upgrade refused: {status}")));
    }
    if !head.contains(ACCEPT) {
        return Err(io::Error::other("upgrade answer lacks the expected Sec-WebSocket-Accept"));
    }
    Ok((stream, buf.split_off(end)))
}

/// Appends one client frame (FIN set, masked with the zero key) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// Appends one server frame (FIN set, unmasked) to `out`.
pub fn encode_server_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// One server frame found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub fin: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
    /// Bytes the frame took in the buffer (header + payload).
    pub len: usize,
}

/// Why a server frame cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Servers must not mask (RFC 6455 §5.1).
    Masked,
    /// A length that cannot be held.
    TooLong,
}

/// The frame at the start of `buf`, `Ok(None)` when it is not complete yet.
///
/// # Errors
/// [`FrameError`] for a masked frame or an absurd length.
pub fn parse_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (len, head) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > 1 << 32 {
        return Err(FrameError::TooLong);
    }
    let total = head + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(Frame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload: &buf[head..total], len: total }))
}

/// Bytes still needed to complete the frame at the start of `buf`, when its header is known
/// (so a reader can size a carry buffer once for a big frame).
pub fn frame_total(buf: &[u8]) -> Option<usize> {
    if buf.len() < 2 {
        return None;
    }
    match buf[1] & 0x7f {
        126 if buf.len() >= 4 => Some(4 + usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => {
            Some(10 + u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")).min(1 << 32) as usize)
        }
        126 | 127 => None,
        n => Some(2 + usize::from(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_server_frame(&mut v, opcode, payload);
        v
    }

    #[test]
    fn parses_every_length_form() {
        for n in [0, 5, 125, 126, 300, 65535, 65536, 200_000] {
            let p = vec![b'x'; n];
            let f = server_frame(OP_TEXT, &p);
            assert_eq!(frame_total(&f), Some(f.len()));
            let got = parse_frame(&f).unwrap().unwrap();
            assert_eq!((got.fin, got.opcode, got.payload.len(), got.len), (true, OP_TEXT, n, f.len()));
            for cut in [1, 2, 3, f.len() - 1] {
                if cut < f.len() {
                    assert_eq!(parse_frame(&f[..cut]).unwrap(), None, "n {n} cut {cut}");
                }
            }
        }
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, b"hi");
        assert_eq!(out, [0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
        out.clear();
        encode_frame(&mut out, OP_TEXT, &[b'x'; 200]);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 0, 200]);
        assert_eq!(out.len(), 4 + 4 + 200);
        assert_eq!(parse_frame(&out), Err(FrameError::Masked));
    }
}
