//! WebSocket limits that must hold: RFC 6455 framing rules on the read path (raw frames over a
//! TcpStream, so nothing between the test and the server fixes them up).

mod common;

use common::{WAIT, binary, config, http, start};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A WebSocket client that writes frames byte by byte as the test spells them (masked or not,
/// any length, any opcode) and reads the server's frames raw.
struct RawWs {
    stream: BufReader<TcpStream>,
}

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

impl RawWs {
    async fn connect(addr: std::net::SocketAddr, path: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut stream = BufReader::new(stream);
        let mut status = String::new();
        tokio::time::timeout(WAIT, stream.read_line(&mut status)).await.expect("handshake in time").unwrap();
        assert!(status.starts_with("HTTP/1.1 101"), "{status}");
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
        }
        RawWs { stream }
    }

    /// Writes one frame; `mask` as the client must (RFC 6455 §5.1), or not.
    async fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8], mask: bool) {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let bit = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(bit | n as u8),
            n if n < 65536 => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if mask {
            let key = [0x37, 0xfa, 0x21, 0x3d];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.stream.get_mut().write_all(&out).await.unwrap();
    }

    /// The next frame from the server: (opcode, payload); `None` when the socket ends.
    async fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        tokio::time::timeout(WAIT, self.stream.read_exact(&mut head)).await.expect("a frame in time").ok()?;
        assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
        let len = match head[1] & 0x7f {
            126 => u64::from(self.stream.read_u16().await.ok()?),
            127 => self.stream.read_u64().await.ok()?,
            n => u64::from(n),
        };
        let mut payload = vec![0; len as usize];
        self.stream.read_exact(&mut payload).await.ok()?;
        Some((head[0] & 0x0f, payload))
    }

    /// Reads until the server's close frame; returns it as (code, payload length), `None` when
    /// the socket ended without one.
    async fn close_frame(&mut self) -> Option<(u16, usize)> {
        while let Some((op, payload)) = self.read().await {
            if op == CLOSE {
                let code =
                    if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                return Some((code, payload.len()));
            }
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_frames_and_oversized_control_frames_close_with_1002() {
    let server = start(config(&[])).await;
    let path = "/v1/rooms/rfc/ws";
    let change = br#"{"type":"change","clientReqId":1,"ops":[{"op":"add","path":"/x","value":1}]}"#;

    // §5.1: a client frame without a mask is a protocol error, whatever its opcode.
    let mut ws = RawWs::connect(server.addr, path).await;
    ws.frame(true, TEXT, change, false).await;
    assert_eq!(ws.close_frame().await, Some((1002, 2 + "protocol error".len())), "unmasked text frame");
    let (_, room) = http(&server, "GET", "/v1/rooms/rfc", None).await;
    assert_eq!(room["rev"], 0, "the unmasked change was not applied: {room}");
    let mut ws = RawWs::connect(server.addr, path).await;
    ws.frame(true, PING, b"hi", false).await;
    assert_eq!(ws.close_frame().await.map(|c| c.0), Some(1002), "unmasked ping");

    // §5.5: control frames carry at most 125 bytes.
    for opcode in [PING, PONG] {
        let mut ws = RawWs::connect(server.addr, path).await;
        ws.frame(true, opcode, &[b'p'; 126], true).await;
        assert_eq!(ws.close_frame().await.map(|c| c.0), Some(1002), "126-byte control frame {opcode:#x}");
    }
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[b'c'; 124]);
    let mut ws = RawWs::connect(server.addr, path).await;
    ws.frame(true, CLOSE, &close, true).await;
    let got = ws.close_frame().await;
    assert_eq!(got.map(|c| c.0), Some(1002), "a 126-byte close is not echoed: {got:?}");

    // The limits themselves are fine: a 125-byte ping is answered, a 125-byte close echoed.
    let mut ws = RawWs::connect(server.addr, path).await;
    ws.frame(true, PING, &[b'p'; 125], true).await;
    loop {
        let (op, payload) = ws.read().await.expect("pong");
        if op == PONG {
            assert_eq!(payload, vec![b'p'; 125]);
            break;
        }
    }
    ws.frame(true, CLOSE, &close[..125], true).await;
    assert_eq!(ws.close_frame().await, Some((1000, 125)), "a 125-byte close is echoed");
}

/// The Autobahn run (scripts/autobahn.sh) needs `GET /test/echo`; it exists only with the hidden
/// `--test-echo-endpoint` switch, and echoes through the room connections' read path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_endpoint_exists_only_behind_a_hidden_test_switch() {
    let help = binary().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--max-message-bytes"), "{help}");
    assert!(!help.contains("echo"), "the test switch is hidden from --help");
    let server = start(config(&[])).await;
    let (status, body) = http(&server, "GET", "/test/echo", None).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    let server = start(config(&["--test-echo-endpoint"])).await;
    let mut ws = RawWs::connect(server.addr, "/test/echo").await;
    // A text message in two fragments with a ping between them; a binary message.
    ws.frame(false, TEXT, "hé".as_bytes(), true).await;
    ws.frame(true, PING, b"p", true).await;
    ws.frame(true, 0x0, "llo".as_bytes(), true).await;
    ws.frame(true, 0x2, &[0, 159, 255], true).await;
    assert_eq!(ws.read().await, Some((PONG, b"p".to_vec())));
    assert_eq!(ws.read().await, Some((TEXT, "héllo".as_bytes().to_vec())));
    assert_eq!(ws.read().await, Some((0x2, vec![0, 159, 255])));
    ws.frame(true, CLOSE, &1000u16.to_be_bytes(), true).await;
    assert_eq!(ws.close_frame().await, Some((1000, 2)));
}
