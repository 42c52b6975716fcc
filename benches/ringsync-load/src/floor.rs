//! `floor-server`: the least a server can spend on fan-out, so that ringsync's fan-out figures can
//! be read as a ratio to it, measured by the same load generator in the same run. It is a
//! WebSocket server that speaks just enough of protocol v1 for `fanout` (and `rooms`) to run
//! against it unchanged: an upgrade to `/v1/rooms/{room}/ws` is answered with a `welcome` and a
//! `snapshot` at the room's revision; a `change` is decoded with ringsync's own decoder, given the
//! room's next revision, and the `delta` frame ringsync would send every other client
//! (`protocol::change_frame`, the same bytes) is built once and written to every other socket in
//! the room with one non-blocking `write` each; the author gets a delta with its ack entry instead
//! (`protocol::entry_ack`), as from ringsync. That is the floor: a server that delivers each change
//! in its own frame must at least make one write per (change, reader), the kernel's send path and
//! loopback delivery that are charged to the sender, plus one decode and encode per change,
//! shared by all readers. Nothing else happens: no document (every snapshot is `{}`), no history
//! or resume (`?since` is ignored, every join gets a snapshot), no presence, no coalescing, no
//! limits, and no task woken per recipient.
//!
//! It runs on a current-thread runtime, so `taskset -c 0` pins it to one core as the ringsync
//! server is pinned with `TOKIO_WORKER_THREADS=1`. Each connection has one local task that sleeps
//! until its socket has something to read (a reader's: only when it closes) or it has output
//! queued. A write the socket does not take whole (`WouldBlock`, or partial) queues the rest on
//! that connection and wakes its task, which flushes it once the socket is writable; later frames
//! go behind the queue, so order holds. A connection with more than `MAX_QUEUED` bytes queued is
//! dropped (ringsync would send it a snapshot; the floor has none). Bad input (a malformed request,
//! an unmasked, binary or fragmented frame, a message that is not JSON, a change ringsync would
//! refuse) closes that connection only; other messages (presence, ping, broadcast) are ignored.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{ErrorKind, Write as _};
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use ringsync::ids::{ClientId, ClientReqId, Rev, RoomId};
use ringsync::protocol::{self, ChangeKind, ClientMsg};
use sha1::{Digest as _, Sha1};
use tokio::net::{TcpListener, TcpStream};

use crate::scan;
use crate::ws::{self, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// A client frame longer than this closes its connection (1009).
const MAX_MESSAGE: u64 = 4 << 20;
/// A connection with more output queued than this (its reader is not reading) is dropped.
const MAX_QUEUED: usize = 4 << 20;
/// The longest upgrade request accepted.
const MAX_HEAD: usize = 16 << 10;
/// Buffers above this are freed once empty.
const KEEP_BUF: usize = 64 << 10;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Every room's epoch (the floor never restarts a room's history).
const EPOCH: &str = "floor";

/// The flags of `floor-server`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on, loopback only (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
}

/// Serves until killed; prints `ringsync-load floor-server listening on http://ADDR` once bound.
pub fn main(a: &Args) -> anyhow::Result<()> {
    ensure!(a.listen.ip().is_loopback(), "--listen must be a loopback address");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    tokio::task::LocalSet::new().block_on(&rt, async {
        // ringsync's own listener set-up (a 4096-deep accept queue).
        let listener =
            ringsync::server::bind(a.listen).with_context(|| format!("cannot listen on {}", a.listen))?;
        println!("ringsync-load floor-server listening on http://{}", listener.local_addr()?);
        serve(listener).await;
        Ok(())
    })
}

/// Accepts connections forever, one local task each (call it inside a `LocalSet`).
pub async fn serve(listener: TcpListener) {
    let rooms: Rc<Rooms> = Rc::default();
    let mut clients = 0;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                clients += 1;
                tokio::task::spawn_local(serve_conn(rooms.clone(), stream, ClientId(clients)));
            }
            // Out of file descriptors, usually: wait rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

type Rooms = RefCell<HashMap<RoomId, Room>>;

#[derive(Default)]
struct Room {
    rev: u64,
    peers: Vec<Rc<Peer>>,
}

/// One connection as the fan-out sees it.
struct Peer {
    stream: TcpStream,
    /// What the socket did not take at once, for the connection's task to flush.
    out: RefCell<Vec<u8>>,
    /// The connection's task, woken when output is first queued or the peer is dropped.
    waker: RefCell<Option<Waker>>,
    dead: Cell<bool>,
}

impl Peer {
    /// Writes `frame` with one non-blocking write (behind any queued output); queues the rest.
    fn send(&self, frame: &[u8]) {
        if self.dead.get() {
            return;
        }
        let mut out = self.out.borrow_mut();
        let rest = if !out.is_empty() {
            frame
        } else {
            match self.stream.try_write(frame) {
                Ok(n) => &frame[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => frame,
                Err(_) => return self.kill(),
            }
        };
        if rest.is_empty() {
            return;
        }
        if out.len() + rest.len() > MAX_QUEUED {
            return self.kill();
        }
        let first = out.is_empty();
        out.extend_from_slice(rest);
        drop(out);
        if first {
            self.wake();
        }
    }

    /// Writes what is queued; `false` when the socket failed.
    fn flush(&self) -> bool {
        let mut out = self.out.borrow_mut();
        match self.stream.try_write(&out) {
            Ok(n) => {
                out.drain(..n);
                if out.is_empty() && out.capacity() > KEEP_BUF {
                    *out = Vec::new();
                }
                true
            }
            Err(e) => e.kind() == ErrorKind::WouldBlock,
        }
    }

    fn kill(&self) {
        self.dead.set(true);
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// A close frame, if the socket takes it at once.
    fn close(&self, code: u16) {
        let mut f = Vec::with_capacity(4);
        ws::encode_server_frame(&mut f, OP_CLOSE, &code.to_be_bytes());
        let _ = self.stream.try_write(&f);
    }
}

/// One connection: the upgrade, joining its room, then reading until it closes.
async fn serve_conn(rooms: Rc<Rooms>, stream: TcpStream, client: ClientId) {
    let mut inbuf = Vec::new();
    let Some((room, accept)) = read_upgrade(&stream, &mut inbuf).await else {
        let _ =
            stream.try_write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let peer = Rc::new(Peer {
        stream,
        out: RefCell::new(Vec::new()),
        waker: RefCell::new(None),
        dead: Cell::new(false),
    });
    let mut hello = Vec::with_capacity(512);
    let _ = write!(
        hello,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    {
        let mut rooms = rooms.borrow_mut();
        let r = rooms.entry(room.clone()).or_default();
        let (rev, session) = (Rev(r.rev), client.to_string());
        let welcome = protocol::Welcome {
            client,
            user: None,
            session: &session,
            epoch: EPOCH,
            rev,
            resumed: false,
            last_client_req_id: ClientReqId(0),
            presence_json: b"{}",
            presence_count: None,
            stacks: protocol::Stacks::default(),
        };
        ws::encode_server_frame(&mut hello, OP_TEXT, &welcome.encode());
        ws::encode_server_frame(&mut hello, OP_TEXT, &protocol::snapshot_frame(rev, ClientReqId(0), b"{}"));
        r.peers.push(peer.clone());
    }
    peer.send(&hello);
    drop(hello);
    while let Some(readable) = std::future::poll_fn(|cx| poll_conn(&peer, cx)).await {
        let ok = if readable { read(&rooms, &room, &peer, client, &mut inbuf) } else { peer.flush() };
        if !ok {
            break;
        }
    }
    let mut rooms = rooms.borrow_mut();
    if let Some(r) = rooms.get_mut(&room) {
        r.peers.retain(|p| !Rc::ptr_eq(p, &peer));
        if r.peers.is_empty() {
            rooms.remove(&room);
        }
    }
}

/// `Some(false)`: queued output can be written; `Some(true)`: the socket can be read; `None`:
/// the peer was dropped.
fn poll_conn(peer: &Peer, cx: &mut std::task::Context<'_>) -> Poll<Option<bool>> {
    if peer.dead.get() {
        return Poll::Ready(None);
    }
    {
        let mut w = peer.waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
    }
    if !peer.out.borrow().is_empty() && peer.stream.poll_write_ready(cx).is_ready() {
        return Poll::Ready(Some(false));
    }
    peer.stream.poll_read_ready(cx).map(|_| Some(true))
}

/// Reads the upgrade request; returns the room and the `Sec-WebSocket-Accept` value, and leaves
/// any bytes after the request head in `buf`.
async fn read_upgrade(stream: &TcpStream, buf: &mut Vec<u8>) -> Option<(RoomId, String)> {
    let end = loop {
        if let Some(i) = scan::find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        stream.readable().await.ok()?;
        buf.reserve(4096);
        match stream.try_read_buf(buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    };
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let target = lines.next()?.strip_prefix("GET ")?.strip_suffix(" HTTP/1.1")?;
    let name = target.split('?').next()?.strip_prefix("/v1/rooms/")?.strip_suffix("/ws")?;
    let room = RoomId::parse(name).ok()?;
    let key = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim())
    })?;
    let digest = Sha1::new().chain_update(key).chain_update(WS_GUID).finalize();
    let accept = base64::engine::general_purpose::STANDARD.encode(digest);
    buf.drain(..end);
    Some((room, accept))
}

/// Reads what the socket has and handles every complete frame; `false` ends the connection.
fn read(rooms: &Rooms, room: &RoomId, peer: &Peer, client: ClientId, buf: &mut Vec<u8>) -> bool {
    buf.reserve(4096);
    match peer.stream.try_read_buf(buf) {
        Ok(0) => return false,
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
        Err(_) => return false,
    }
    let mut used = 0;
    let ok = loop {
        let (fin, opcode, payload) = match client_frame(&mut buf[used..]) {
            Ok(Some(f)) => f,
            Ok(None) => break true,
            Err(code) => {
                peer.close(code);
                break false;
            }
        };
        let p = used + payload.start..used + payload.end;
        used = p.end;
        let closing = match opcode {
            OP_TEXT if fin => on_text(rooms, room, peer, client, &buf[p]).err(),
            OP_PING => {
                let mut f = Vec::with_capacity(p.len() + 2);
                ws::encode_server_frame(&mut f, OP_PONG, &buf[p]);
                peer.send(&f);
                None
            }
            OP_PONG => None,
            // The client's close (echoed), or a binary or fragmented message (not supported).
            OP_CLOSE => Some(1000),
            _ => Some(1003),
        };
        if let Some(code) = closing {
            peer.close(code);
            break false;
        }
    };
    buf.drain(..used);
    if buf.is_empty() && buf.capacity() > KEEP_BUF {
        *buf = Vec::new();
    }
    ok
}

/// The masked client frame at the start of `buf`, unmasked in place: FIN, opcode and where its
/// payload is (its end is where the frame ends); `Ok(None)` until it is complete.
///
/// # Errors
/// The close code: 1002 for an unmasked frame or RSV bits, 1009 for one over `MAX_MESSAGE`.
fn client_frame(buf: &mut [u8]) -> Result<Option<(bool, u8, Range<usize>)>, u16> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 == 0 || b0 & 0x70 != 0 {
        return Err(1002);
    }
    let (len, at) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut n = [0; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > MAX_MESSAGE {
        return Err(1009);
    }
    let (start, end) = (at + 4, at + 4 + len as usize);
    if buf.len() < end {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    for (i, b) in buf[start..end].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Some((b0 & 0x80 != 0, b0 & 0x0f, start..end)))
}

/// A text message: a `change` is committed and fanned out; other messages are ignored.
///
/// # Errors
/// The close code for a message that is not JSON (1007) or a change ringsync would refuse, or one
/// the floor does not serve (undo, redo, reverts: 1008).
fn on_text(rooms: &Rooms, room: &RoomId, peer: &Peer, client: ClientId, text: &[u8]) -> Result<(), u16> {
    let c = match protocol::decode_client(text) {
        Ok(ClientMsg::Change(c)) => c,
        Ok(_) => return Ok(()),
        Err(_) => return Err(1007),
    };
    let (None, Ok(ops), Ok(_), ChangeKind::Plain) = (c.refusal, c.ops, c.mode, c.kind) else {
        return Err(1008);
    };
    let ops = protocol::encode_ops(&ops);
    let mut rooms = rooms.borrow_mut();
    let Some(r) = rooms.get_mut(room) else { return Err(1011) };
    r.rev += 1;
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let head = protocol::EntryHead::new(Rev(r.rev), client, None, ts);
    // The frame every other client gets, built once.
    let (delta, _) = protocol::change_frame(&head, &ops);
    let mut frame = Vec::with_capacity(delta.len() + 10);
    ws::encode_server_frame(&mut frame, OP_TEXT, &delta);
    for p in &r.peers {
        if !std::ptr::eq(&**p, peer) {
            p.send(&frame);
        }
    }
    let ack = protocol::entry_ack(&head, c.client_req_id, protocol::Stacks::default(), None);
    let mine = protocol::delta_frame(Rev(r.rev - 1), Rev(r.rev), std::iter::once(&ack[..]), ack.len());
    frame.clear();
    ws::encode_server_frame(&mut frame, OP_TEXT, &mine);
    peer.send(&frame);
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// The next whole server frame on `s` (after what `buf` holds): its opcode and payload;
    /// `None` at end of stream.
    async fn next_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(f) = ws::parse_frame(buf).expect("a server frame") {
                let (opcode, payload, len) = (f.opcode, f.payload.to_vec(), f.len);
                buf.drain(..len);
                return Some((opcode, payload));
            }
            let mut chunk = [0; 4096];
            let n = s.read(&mut chunk).await.expect("read");
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn next_text(s: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
        let (opcode, payload) = next_frame(s, buf).await.expect("a frame before the end");
        assert_eq!(opcode, OP_TEXT, "{}", String::from_utf8_lossy(&payload));
        payload
    }

    /// Connects to the room, checks the welcome and the snapshot at `rev`.
    async fn join(addr: SocketAddr, rev: u64) -> (TcpStream, Vec<u8>) {
        let (mut s, mut buf) = ws::connect(addr, "/v1/rooms/floor-test/ws", None).await.expect("upgrade");
        let w = next_text(&mut s, &mut buf).await;
        assert_eq!(scan::msg_type(&w), b"welcome");
        assert_eq!(scan::num_after(&w, b"\"rev\":"), Some(rev));
        let snap = next_text(&mut s, &mut buf).await;
        assert_eq!(scan::msg_type(&snap), b"snapshot");
        assert_eq!(scan::num_after(scan::head(&snap), b"\"rev\":"), Some(rev));
        (s, buf)
    }

    /// Runs `test` against a floor server on a free port, within 10 s.
    fn with_server<F: Future<Output = ()>>(test: impl FnOnce(SocketAddr) -> F) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        tokio::task::LocalSet::new().block_on(&rt, async {
            let listener = ringsync::server::bind(([127, 0, 0, 1], 0).into()).expect("bind");
            let addr = listener.local_addr().expect("an address");
            tokio::task::spawn_local(serve(listener));
            tokio::time::timeout(Duration::from_secs(10), test(addr)).await.expect("done within 10 s");
        });
    }

    #[test]
    fn every_reader_gets_the_delta_and_the_author_its_ack() {
        with_server(|addr| async move {
            let (mut writer, mut wbuf) = join(addr, 0).await;
            let mut readers = Vec::new();
            for _ in 0..3 {
                readers.push(join(addr, 0).await);
            }
            let (mut msg, mut frame) = (Vec::new(), Vec::new());
            crate::role::write_change(&mut msg, 1, 4242, 10);
            ws::encode_frame(&mut frame, OP_TEXT, &msg);
            writer.write_all(&frame).await.expect("send");
            for (s, buf) in &mut readers {
                let d = next_text(s, buf).await;
                assert_eq!(scan::msg_type(&d), b"delta");
                assert_eq!(scan::num_after(scan::head(&d), b"\"from\":"), Some(0));
                assert_eq!(scan::num_after(scan::head(&d), b"\"to\":"), Some(1));
                let mut ts = Vec::new();
                scan::each_value_ts(&d, |t| ts.push(t));
                assert_eq!(ts, [4242]);
            }
            let ack = next_text(&mut writer, &mut wbuf).await;
            assert_eq!(scan::msg_type(&ack), b"delta");
            assert_eq!(scan::num_after(&ack, b"\"clientReqId\":"), Some(1));
            assert_eq!(scan::num_after(scan::head(&ack), b"\"to\":"), Some(1));
            // A later reader joins at the new revision.
            join(addr, 1).await;
        });
    }

    #[test]
    fn a_full_socket_gets_the_rest_queued_and_flushed_in_order() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        tokio::task::LocalSet::new().block_on(&rt, async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
            // A small receive window, so the server's socket fills after a few frames.
            socket.set_recv_buffer_size(4096).expect("rcvbuf");
            let mut client =
                socket.connect(listener.local_addr().expect("an address")).await.expect("connect");
            let (stream, _) = listener.accept().await.expect("accept");
            let peer = Peer {
                stream,
                out: RefCell::new(Vec::new()),
                waker: RefCell::new(None),
                dead: Cell::new(false),
            };
            let frame = |i: usize| {
                let mut f = Vec::new();
                ws::encode_server_frame(&mut f, OP_TEXT, &[(i % 251) as u8; 16 << 10]);
                f
            };
            let mut sent = 0;
            while peer.out.borrow().is_empty() {
                assert!(sent < 200, "the socket never filled");
                peer.send(&frame(sent));
                sent += 1;
            }
            for _ in 0..3 {
                peer.send(&frame(sent));
                sent += 1;
            }
            assert!(!peer.dead.get() && peer.out.borrow().len() > 3 * (16 << 10));
            let reader = tokio::task::spawn_local(async move {
                let mut buf = Vec::new();
                let mut got = Vec::new();
                for _ in 0..sent {
                    let (_, p) = next_frame(&mut client, &mut buf).await.expect("a frame");
                    assert!(p.len() == 16 << 10 && p.iter().all(|&b| b == p[0]), "an intact frame");
                    got.push(usize::from(p[0]));
                }
                got
            });
            let flush = async {
                while !peer.out.borrow().is_empty() {
                    peer.stream.writable().await.expect("writable");
                    assert!(peer.flush());
                }
                reader.await.expect("the reader")
            };
            let got = tokio::time::timeout(Duration::from_secs(10), flush).await.expect("within 10 s");
            assert_eq!(got, (0..sent).map(|i| i % 251).collect::<Vec<_>>());
        });
    }

    #[test]
    fn bad_input_closes_that_connection_only() {
        with_server(|addr| async move {
            let (mut reader, mut rbuf) = join(addr, 0).await;
            // An unmasked frame, then a message that is not JSON.
            for (bad, code) in [(vec![0x81, 2, b'h', b'i'], 1002u16), (b"{oops".to_vec(), 1007)] {
                let (mut s, mut buf) = join(addr, 0).await;
                let frame = if code == 1002 {
                    bad
                } else {
                    let mut f = Vec::new();
                    ws::encode_frame(&mut f, OP_TEXT, &bad);
                    f
                };
                s.write_all(&frame).await.expect("send");
                let close = next_frame(&mut s, &mut buf).await.expect("a close frame");
                assert_eq!(close, (OP_CLOSE, code.to_be_bytes().to_vec()));
                assert_eq!(next_frame(&mut s, &mut buf).await, None, "then the end");
            }
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("send");
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.expect("read");
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
            // The room still works.
            let (mut writer, _) = join(addr, 0).await;
            let (mut msg, mut frame) = (Vec::new(), Vec::new());
            crate::role::write_change(&mut msg, 1, 7, 0);
            ws::encode_frame(&mut frame, OP_TEXT, &msg);
            writer.write_all(&frame).await.expect("send");
            let d = next_text(&mut reader, &mut rbuf).await;
            assert_eq!(scan::num_after(scan::head(&d), b"\"to\":"), Some(1));
        });
    }
}
