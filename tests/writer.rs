//! The connection writer (`src/writer.rs`) driven through an in-memory [`FrameSink`]: what a
//! client is sent on join and resume, that deltas are gapless and coalesce behind a slow socket,
//! that a client the ring has left behind gets a snapshot, that authors get acks, and how each
//! way of ending writes (or does not write) its close frame.
//!
//! The sink records every frame that gets through (text payloads decoded as JSON) in a `watch`
//! channel, so a test awaits the log reaching a state instead of sleeping. It can be blocked like
//! a full socket: a write then waits at a gate until the test opens it, and the sink says when a
//! write is waiting, so a test knows the writer is stuck before it commits more. Each test drives
//! a real `Room` and `Session` with no server or network, and every wait is bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, WebSocketError};
use ringsync::close::CloseReason;
use ringsync::ids::{ClientId, ClientReqId, Rev, RoomId};
use ringsync::patch;
use ringsync::protocol::{self, ErrorCode, Mode};
use ringsync::room::{ChangeRequest, Room, RoomConfig};
use ringsync::session::{ResumeFrom, Session, Sessions};
use ringsync::writer::{self, FrameSink, Heard, Outgoing, ReplySender, Signals, Writer, WriterConfig};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bound on every wait for something the writer should do promptly.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The in-memory sink
// ---------------------------------------------------------------------------------------------

/// One frame as the sink took it.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Text(Value),
    /// The raw close payload: a big-endian code, then the reason text.
    Close(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Other(OpCode, Vec<u8>),
}

impl Sent {
    /// The `type` of a text message.
    fn kind(&self) -> Option<&str> {
        match self {
            Sent::Text(v) => v["type"].as_str(),
            _ => None,
        }
    }

    fn close_code(&self) -> Option<u16> {
        match self {
            Sent::Close(p) if p.len() >= 2 => Some(u16::from_be_bytes([p[0], p[1]])),
            _ => None,
        }
    }
}

/// The write half of an in-memory socket.
struct MemSink {
    log: watch::Sender<Vec<Sent>>,
    /// `true` while writes go through; a write that finds it `false` waits, as on a full socket.
    gate: watch::Receiver<bool>,
    /// Whether a write is waiting at the gate (left `true` if the writer abandons that write).
    stalled: watch::Sender<bool>,
    /// Writes begun, counting one stuck at the gate or abandoned by the writer: the log alone
    /// cannot show a write that never got through.
    attempts: Arc<AtomicUsize>,
    closed: bool,
}

impl FrameSink for MemSink {
    async fn write_frame(&mut self, frame: Frame<'_>) -> Result<(), WebSocketError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if !*self.gate.borrow() {
            self.stalled.send_replace(true);
            let opened = self.gate.wait_for(|open| *open).await.is_ok();
            self.stalled.send_replace(false);
            if !opened {
                return Err(WebSocketError::ConnectionClosed);
            }
        }
        assert!(frame.fin, "the writer sends whole messages");
        let payload = frame.payload.to_vec();
        let sent = match frame.opcode {
            OpCode::Text => Sent::Text(serde_json::from_slice(&payload).expect("text frames are JSON")),
            OpCode::Close => {
                self.closed = true;
                Sent::Close(payload)
            }
            OpCode::Ping => Sent::Ping(payload),
            OpCode::Pong => Sent::Pong(payload),
            op => Sent::Other(op, payload),
        };
        self.log.send_modify(|log| log.push(sent));
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

/// The test's side of a [`MemSink`].
struct Tap {
    log: watch::Receiver<Vec<Sent>>,
    gate: watch::Sender<bool>,
    stalled: watch::Receiver<bool>,
    attempts: Arc<AtomicUsize>,
}

fn mem_sink() -> (MemSink, Tap) {
    let (log_tx, log) = watch::channel(Vec::new());
    let (gate, gate_rx) = watch::channel(true);
    let (stalled_tx, stalled) = watch::channel(false);
    let attempts = Arc::new(AtomicUsize::new(0));
    let sink = MemSink {
        log: log_tx,
        gate: gate_rx,
        stalled: stalled_tx,
        attempts: attempts.clone(),
        closed: false,
    };
    (sink, Tap { log, gate, stalled, attempts })
}

impl Tap {
    fn block(&self) {
        self.gate.send_replace(false);
    }

    fn unblock(&self) {
        self.gate.send_replace(true);
    }

    fn frames(&self) -> Vec<Sent> {
        self.log.borrow().clone()
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until the log satisfies `pred`, and returns it.
    async fn wait_for(&self, what: &str, mut pred: impl FnMut(&[Sent]) -> bool) -> Vec<Sent> {
        let mut rx = self.log.clone();
        match tokio::time::timeout(WAIT, rx.wait_for(|log| pred(log))).await {
            Ok(Ok(log)) => log.clone(),
            Ok(Err(_)) => panic!("the writer ended before {what}: {:#?}", self.frames()),
            Err(_) => panic!("timed out waiting for {what}: {:#?}", self.frames()),
        }
    }

    /// Waits (bounded) until a write is stuck at the closed gate.
    async fn wait_stalled(&self) {
        let mut rx = self.stalled.clone();
        tokio::time::timeout(WAIT, rx.wait_for(|s| *s))
            .await
            .expect("a write reaches the blocked sink")
            .expect("sink alive");
    }

    /// Waits until the writer has delivered (a delta or snapshot reaching) revision `rev`.
    async fn wait_rev(&self, rev: u64) -> Vec<Sent> {
        self.wait_for(&format!("rev {rev}"), |log| catch_ups(log).last().is_some_and(|f| reaches(f) >= rev))
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// A writer on a real room and session
// ---------------------------------------------------------------------------------------------

/// One connection's writer, running as its own task.
struct Conn {
    tap: Tap,
    session: Arc<Session>,
    replies: ReplySender,
    /// Held so the writer's shutdown arm only fires when a test sends on it (a dropped sender
    /// would also wake it).
    shutdown: watch::Sender<bool>,
    task: JoinHandle<CloseReason>,
    markers: u64,
    /// The connection's generation in its session.
    generation: u64,
}

fn writer_config() -> WriterConfig {
    WriterConfig {
        presence_interval: Duration::ZERO,
        ping_interval: Duration::from_secs(3600),
        write_timeout: Duration::from_secs(60),
        shutdown_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(7200),
    }
}

fn new_room(history: usize) -> Arc<Room> {
    Arc::new(Room::new(RoomId::parse("r").unwrap(), RoomConfig { history, ..RoomConfig::default() }))
}

/// Attaches a session as `connection::serve` does (presence join before the writer starts) and
/// spawns its writer.
fn connect(room: &Arc<Room>, sessions: &Sessions, from: ResumeFrom, config: WriterConfig) -> Conn {
    connect_hearing(room, sessions, from, config, None)
}

/// [`connect`], with the writer keeping the idle timeout on what `heard` heard.
fn connect_hearing(
    room: &Arc<Room>,
    sessions: &Sessions,
    from: ResumeFrom,
    config: WriterConfig,
    heard: Option<Arc<Heard>>,
) -> Conn {
    let attached = sessions.attach(room, from.session.as_deref(), None).expect("under --max-sessions");
    room.presence.join(attached.session.client);
    let (sink, tap) = mem_sink();
    let (replies, replies_rx) = writer::reply_channel();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let signals =
        Signals { replies: replies_rx, kicked: attached.kicked, shutdown: shutdown_rx, expiry: None };
    let session = attached.session.clone();
    let resumed = attached.resumed;
    let task = tokio::spawn(async move {
        let (mut writer, mut signals) = (Writer::new(sink, &config, &session), signals);
        if let Some(heard) = &heard {
            writer = writer.heard(heard);
        }
        writer.run(Box::new(from), resumed, &mut signals).await
    });
    Conn { tap, session: attached.session, replies, shutdown, task, markers: 0, generation: attached.conn }
}

impl Conn {
    /// The first two frames: `welcome` and the catch-up that follows it.
    async fn hello(&self) -> (Value, Value) {
        let log = self.tap.wait_for("welcome and its catch-up", |log| log.len() >= 2).await;
        match (&log[0], &log[1]) {
            (Sent::Text(w), Sent::Text(c)) => (w.clone(), c.clone()),
            _ => panic!("hello is two text frames: {log:#?}"),
        }
    }

    /// Sends a marker through the reply channel and waits for it: once it is written, the writer
    /// has handled everything that was ready before it.
    async fn barrier(&mut self) -> Vec<Sent> {
        self.markers += 1;
        let marker = json!({"type": "marker", "n": self.markers});
        self.reply(Outgoing::Text(protocol::encode(&marker))).await;
        self.tap.wait_for("the marker", |log| log.iter().any(|s| *s == Sent::Text(marker.clone()))).await
    }

    async fn reply(&self, out: Outgoing) {
        self.replies.send_async(Box::new(out)).await.expect("writer running");
    }
}

/// How the writer task ended (bounded).
async fn ended(task: &mut JoinHandle<CloseReason>) -> CloseReason {
    tokio::time::timeout(WAIT, task).await.expect("the writer ends").expect("the writer does not panic")
}

/// Commits `{"k<n>": n}` (overwrite mode) and returns the new revision.
fn commit(room: &Room, author: ClientId, req: Option<u64>, n: u64) -> u64 {
    let ops = patch::parse_patch(json!([{"op": "add", "path": format!("/k{n}"), "value": n}])).unwrap();
    let change = room
        .commit(ChangeRequest {
            author,
            user: None,
            client_req_id: req.map(ClientReqId),
            base_rev: None,
            mode: Mode::Overwrite,
            ops,
            extras: Default::default(),
        })
        .expect("an overwrite commits");
    // As the server's committers do once they hold no lock: the write pass.
    room.deliver();
    change.rev.0
}

/// Author of changes that are nobody's connection (the HTTP API).
const OTHER: ClientId = ClientId::HTTP;

// ---------------------------------------------------------------------------------------------
// Reading the log
// ---------------------------------------------------------------------------------------------

/// The `delta` and `snapshot` messages, in order (no welcome, presence or control messages).
fn catch_ups(log: &[Sent]) -> Vec<&Value> {
    log.iter()
        .filter(|s| matches!(s.kind(), Some("delta" | "snapshot")))
        .map(|s| match s {
            Sent::Text(v) => v,
            _ => unreachable!(),
        })
        .collect()
}

/// The revision a catch-up frame brings the client to.
fn reaches(frame: &Value) -> u64 {
    match frame["type"].as_str() {
        Some("delta") => frame["to"].as_u64().expect("delta.to"),
        Some("snapshot") => frame["rev"].as_u64().expect("snapshot.rev"),
        other => panic!("not a catch-up frame: {other:?}"),
    }
}

/// Checks that the catch-up frames form one chain (each delta starts where the previous frame
/// left the client, and carries exactly the changes `from+1 ..= to`), and returns where it ends.
fn assert_chain(frames: &[&Value]) -> u64 {
    let mut at: Option<u64> = None;
    for f in frames {
        if f["type"] == "delta" {
            let (from, to) = (f["from"].as_u64().unwrap(), f["to"].as_u64().unwrap());
            if let Some(at) = at {
                assert_eq!(from, at, "delta must start where the client stands: {f}");
            }
            let revs: Vec<u64> =
                f["changes"].as_array().unwrap().iter().map(|c| c["rev"].as_u64().unwrap()).collect();
            assert_eq!(revs, (from + 1..=to).collect::<Vec<_>>(), "delta carries exactly from+1..=to: {f}");
        }
        at = Some(reaches(f));
    }
    at.expect("at least one catch-up frame")
}

fn deltas<'a>(frames: &[&'a Value]) -> Vec<&'a Value> {
    frames.iter().copied().filter(|f| f["type"] == "delta").collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Hello ordering
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fresh_join_is_welcome_then_one_snapshot() {
    let room = new_room(64);
    let sessions = Sessions::default();
    for n in 1..=3 {
        commit(&room, OTHER, None, n);
    }
    let mut conn = connect(&room, &sessions, ResumeFrom::default(), writer_config());
    let (welcome, snap) = conn.hello().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["client"], conn.session.client.to_string());
    assert_eq!(welcome["session"], *conn.session.token);
    assert_eq!(welcome["epoch"], room.epoch().as_str());
    assert_eq!(welcome["resumed"], false);
    assert_eq!(welcome["rev"], 3);
    assert!(welcome["presence"].get(conn.session.client.to_string()).is_some(), "welcome lists the joiner");
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["rev"], welcome["rev"]);
    assert_eq!(snap["lastClientReqId"], welcome["lastClientReqId"]);
    assert_eq!(snap["state"], room.state().1);
    let log = conn.barrier().await;
    assert_eq!(log.len(), 3, "nothing but welcome and one snapshot before the marker: {log:#?}");
}

/// A room at revision 5 (five changes by someone else) and a session of it that has had
/// `clientReqId` 7 processed: what the resume tests resume.
fn a_session_five_changes_behind() -> (Arc<Room>, Sessions, ringsync::session::Attached) {
    let room = new_room(64);
    let sessions = Sessions::default();
    let first = sessions.attach(&room, None, None).unwrap();
    first.session.state.lock().last_req = ClientReqId(7);
    for n in 1..=5 {
        commit(&room, OTHER, None, n);
    }
    (room, sessions, first)
}

#[tokio::test]
async fn resume_inside_the_ring_is_welcome_then_delta_to_head() {
    let (room, sessions, first) = a_session_five_changes_behind();
    let from = ResumeFrom {
        session: Some(first.session.token.to_string()),
        epoch: Some(room.epoch().as_str().to_owned()),
        since: Some(Rev(2)),
    };
    let mut conn = connect(&room, &sessions, from, writer_config());
    let (welcome, delta) = conn.hello().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["resumed"], true);
    assert_eq!(welcome["client"], first.session.client.to_string(), "same session, same client id");
    assert_eq!(welcome["rev"], 5);
    assert_eq!(welcome["lastClientReqId"], 7);
    assert_eq!(delta["type"], "delta");
    assert_eq!(delta["from"], 2);
    assert_eq!(delta["to"], welcome["rev"]);
    assert_eq!(assert_chain(&[&delta]), 5);
    let log = conn.barrier().await;
    assert_eq!(log.len(), 3, "nothing but welcome and one delta before the marker: {log:#?}");
}

#[tokio::test]
async fn resume_from_another_epoch_is_a_snapshot() {
    let (room, sessions, first) = a_session_five_changes_behind();
    let from = ResumeFrom {
        session: Some(first.session.token.to_string()),
        epoch: Some("another-epoch".into()),
        since: Some(Rev(2)),
    };
    let conn = connect(&room, &sessions, from, writer_config());
    let (welcome, snap) = conn.hello().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["resumed"], true);
    assert_eq!(welcome["rev"], 5);
    assert_eq!(snap["type"], "snapshot", "revisions of another epoch mean nothing here");
    assert_eq!(snap["rev"], 5);
    assert_eq!(snap["lastClientReqId"], 7);
    assert_eq!(snap["lastClientReqId"], welcome["lastClientReqId"]);
    assert_eq!(snap["state"], room.state().1);
}

// ---------------------------------------------------------------------------------------------
// 2. Gapless, in order
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_are_gapless_and_in_order() {
    let room = new_room(1024);
    let sessions = Sessions::default();
    let conn = connect(&room, &sessions, ResumeFrom::default(), writer_config());
    conn.hello().await;
    // One at a time, each delivered before the next: the one-change frame shared at commit.
    for n in 1..=20 {
        let rev = commit(&room, OTHER, None, n);
        conn.tap.wait_rev(rev).await;
    }
    // Then racing the writer (on another worker thread), so frames carry varying ranges.
    let mut head = 0;
    for n in 21..=300 {
        head = commit(&room, OTHER, None, n);
        if n % 7 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let log = conn.tap.wait_rev(head).await;
    let frames = catch_ups(&log);
    assert_eq!(frames[0]["type"], "snapshot", "a fresh join starts from a snapshot");
    assert_eq!(
        frames[1..].iter().filter(|f| f["type"] == "snapshot").count(),
        0,
        "no snapshot while in the ring"
    );
    assert_eq!(assert_chain(&frames), head);
    let carried: usize = deltas(&frames).iter().map(|d| d["changes"].as_array().unwrap().len()).sum();
    assert_eq!(carried as u64, head, "every change sent exactly once");
}

// ---------------------------------------------------------------------------------------------
// 3. Coalescing behind a slow socket
// ---------------------------------------------------------------------------------------------

/// A welcomed connection whose socket blocked on change 1 while changes 2..=`changes` were
/// committed behind it (ring of `history`); returns the room's head.
async fn stalled_behind(history: usize, changes: u64) -> (Arc<Room>, Sessions, Conn, u64) {
    let room = new_room(history);
    let sessions = Sessions::default();
    let conn = connect(&room, &sessions, ResumeFrom::default(), writer_config());
    conn.hello().await;
    conn.tap.block();
    commit(&room, OTHER, None, 1);
    conn.tap.wait_stalled().await;
    let mut head = 0;
    for n in 2..=changes {
        head = commit(&room, OTHER, None, n);
    }
    (room, sessions, conn, head)
}

#[tokio::test]
async fn a_blocked_socket_gets_the_backlog_coalesced() {
    let (_room, _sessions, conn, head) = stalled_behind(1024, 50).await;
    let before = conn.tap.frames().len();
    conn.tap.unblock();
    let log = conn.tap.wait_rev(head).await;
    let after: Vec<&Value> = catch_ups(&log[before..]);
    assert!(
        (1..=2).contains(&after.len()),
        "50 changes behind a blocked socket go out in one or two deltas: {after:#?}"
    );
    assert!(after.iter().all(|f| f["type"] == "delta"));
    let frames = catch_ups(&log);
    assert_eq!(assert_chain(&frames), head);
}

// ---------------------------------------------------------------------------------------------
// 4. Snapshot once the ring has moved on
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_behind_the_ring_gets_a_snapshot_then_deltas() {
    let (room, _sessions, conn, head) = stalled_behind(4, 20).await;
    conn.tap.unblock();
    let log = conn.tap.wait_rev(head).await;
    let frames = catch_ups(&log);
    // The hello's snapshot, the delta that was stuck in the socket, then the head as a snapshot.
    assert_eq!(frames.len(), 3, "{frames:#?}");
    assert_eq!(frames[1]["type"], "delta");
    assert_eq!(frames[1]["to"], 1);
    assert_eq!(frames[2]["type"], "snapshot", "changes 2..=16 have left a 4-entry ring");
    assert_eq!(frames[2]["rev"], head);
    assert_eq!(frames[2]["state"], room.state().1);
    // Back inside the ring: deltas again, from the snapshot's revision.
    let next = commit(&room, OTHER, None, 21);
    let log = conn.tap.wait_rev(next).await;
    let frames = catch_ups(&log);
    assert_eq!(frames.len(), 4, "{frames:#?}");
    assert_eq!(frames[3]["type"], "delta");
    assert_eq!(frames[3]["from"], head);
    assert_eq!(assert_chain(&frames), next);
}

// ---------------------------------------------------------------------------------------------
// 5. Acks inside the author's delta
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn authors_get_acks_and_everyone_else_gets_ops() {
    let room = new_room(1024);
    let sessions = Sessions::default();
    let author = connect(&room, &sessions, ResumeFrom::default(), writer_config());
    let peer = connect(&room, &sessions, ResumeFrom::default(), writer_config());
    author.hello().await;
    peer.hello().await;
    let me = author.session.client;
    // (author, clientReqId) of every revision.
    let mut made: Vec<(ClientId, Option<u64>)> = vec![(OTHER, None)]; // index 0 unused
    let mut make = |who: ClientId, req: Option<u64>| {
        made.push((who, req));
        commit(&room, who, req, made.len() as u64 - 1)
    };
    // One at a time (single-change frames)...
    for (who, req) in [(me, Some(1)), (OTHER, None), (me, Some(2)), (me, None)] {
        let rev = make(who, req);
        author.tap.wait_rev(rev).await;
        peer.tap.wait_rev(rev).await;
    }
    // ...and coalesced behind blocked sockets (multi-change frames, which the room caches for
    // non-authors: the author's personal frame must not leak to the peer).
    author.tap.block();
    peer.tap.block();
    make(me, Some(3));
    author.tap.wait_stalled().await;
    peer.tap.wait_stalled().await;
    let mut head = 0;
    for (who, req) in [(OTHER, None), (me, Some(4)), (OTHER, None), (me, Some(5))] {
        head = make(who, req);
    }
    author.tap.unblock();
    peer.tap.unblock();
    let author_log = author.tap.wait_rev(head).await;
    let peer_log = peer.tap.wait_rev(head).await;

    for (log, recipient) in [(&author_log, me), (&peer_log, peer.session.client)] {
        let frames = catch_ups(log);
        assert_eq!(assert_chain(&frames), head);
        assert!(
            deltas(&frames).iter().any(|d| d["changes"].as_array().unwrap().len() > 1),
            "some delta coalesced"
        );
        for entry in deltas(&frames).iter().flat_map(|d| d["changes"].as_array().unwrap()) {
            let rev = entry["rev"].as_u64().unwrap() as usize;
            let (who, req) = made[rev];
            assert_eq!(entry["client"], who.to_string(), "{entry}");
            match req {
                Some(id) if who == recipient => {
                    assert_eq!(entry["clientReqId"], id, "the author's own change is an ack: {entry}");
                    assert!(entry.get("ops").is_none(), "an ack carries no ops: {entry}");
                }
                _ => {
                    assert!(entry["ops"].is_array(), "others' changes carry ops: {entry}");
                    assert!(entry.get("clientReqId").is_none(), "no ack for someone else's change: {entry}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Close handling
// ---------------------------------------------------------------------------------------------

fn close_frames(log: &[Sent]) -> Vec<&Sent> {
    log.iter().filter(|s| matches!(s, Sent::Close(_))).collect()
}

#[tokio::test]
async fn close_request_writes_its_code_and_ends() {
    let room = new_room(64);
    let sessions = Sessions::default();
    let mut conn = connect(&room, &sessions, ResumeFrom::default(), writer_config());
    conn.hello().await;
    conn.reply(Outgoing::Close(CloseReason::Idle)).await;
    assert_eq!(ended(&mut conn.task).await, CloseReason::Idle);
    let log = conn.tap.frames();
    assert_eq!(close_frames(&log).len(), 1, "{log:#?}");
    let last = log.last().unwrap();
    assert_eq!(last.close_code(), Some(1001));
    assert_eq!(*last, Sent::Close([&1001u16.to_be_bytes()[..], b"idle timeout"].concat()));
}

/// The idle timeout is the writer's: a client heard within `--idle-timeout` stays, one silent
/// for it is closed with 1001 "idle timeout" (paused clock: no timing assumption).
#[tokio::test(start_paused = true)]
async fn a_silent_client_is_closed_for_idleness_and_each_frame_heard_postpones_it() {
    let room = new_room(64);
    let sessions = Sessions::default();
    let config = WriterConfig { idle_timeout: Duration::from_secs(5), ..writer_config() };
    let heard = Arc::new(Heard::default());
    let mut conn = connect_hearing(&room, &sessions, ResumeFrom::default(), config, Some(heard.clone()));
    conn.hello().await;
    // A frame every 2 s for 30 s: never 5 s of silence.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        heard.note();
    }
    assert!(!conn.task.is_finished(), "closed although heard every 2 s: {:#?}", conn.tap.frames());
    let silent_from = tokio::time::Instant::now();
    assert_eq!(ended(&mut conn.task).await, CloseReason::Idle);
    let silence = silent_from.elapsed();
    assert!(silence >= Duration::from_secs(5), "closed after {silence:?} of silence");
    assert!(silence < Duration::from_secs(6), "closed only after {silence:?} of silence");
    let log = conn.tap.frames();
    assert_eq!(*log.last().unwrap(), Sent::Close([&1001u16.to_be_bytes()[..], b"idle timeout"].concat()));
}

/// A writer without a [`Heard`] keeps no idle timeout (the echo endpoint keeps its own).
#[tokio::test(start_paused = true)]
async fn a_writer_that_hears_nothing_keeps_no_idle_timeout() {
    let room = new_room(64);
    let sessions = Sessions::default();
    let config = WriterConfig { idle_timeout: Duration::from_secs(1), ..writer_config() };
    let conn = connect(&room, &sessions, ResumeFrom::default(), config);
    conn.hello().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!conn.task.is_finished(), "{:#?}", conn.tap.frames());
}

#[tokio::test]
async fn takeover_closes_with_4001() {
    let room = new_room(64);
    let sessions = Sessions::default();
    let mut conn = connect(&room, &sessions, ResumeFrom::default(), writer_config());
    conn.hello().await;
    let second = sessions.attach(&room, Some(&conn.session.token), None).unwrap();
    assert!(second.resumed);
    assert_eq!(ended(&mut conn.task).await, CloseReason::TakenOver);
    let log = conn.tap.frames();
    assert_eq!(close_frames(&log).len(), 1, "{log:#?}");
    assert_eq!(log.last().unwrap().close_code(), Some(4001));
}

#[tokio::test]
async fn a_kick_sender_dropped_without_a_takeover_is_not_a_takeover() {
    let room = new_room(64);
    let sessions = Arc::new(Sessions::default());
    let mut conn = connect(&room, &sessions, ResumeFrom::default(), writer_config());
    conn.hello().await;
    // `detach` drops the session's kick sender (as after a connection's end) without kicking.
    assert!(sessions.detach(&conn.session, conn.generation, false));
    conn.barrier().await;
    let rev = commit(&room, ClientId(999), None, 1);
    conn.tap.wait_rev(rev).await;
    assert!(!conn.task.is_finished(), "still serving after its kick sender went away");
}

#[tokio::test]
async fn client_close_is_echoed_once() {
    let room = new_room(64);
    let sessions = Sessions::default();
    let mut conn = connect(&room, &sessions, ResumeFrom::default(), writer_config());
    conn.hello().await;
    let payload = [&1000u16.to_be_bytes()[..], b"client done"].concat();
    conn.reply(Outgoing::CloseEcho(payload.clone())).await;
    assert_eq!(ended(&mut conn.task).await, CloseReason::Normal);
    let log = conn.tap.frames();
    assert_eq!(close_frames(&log), vec![&Sent::Close(payload)], "the echo and no second close: {log:#?}");
    assert_eq!(conn.tap.attempts(), log.len(), "no further write was attempted");
}

#[tokio::test]
async fn reader_gone_ends_without_a_close_frame() {
    let room = new_room(64);
    let sessions = Sessions::default();
    let mut conn = connect(&room, &sessions, ResumeFrom::default(), writer_config());
    conn.hello().await;
    drop(conn.replies);
    assert_eq!(ended(&mut conn.task).await, CloseReason::Gone);
    let log = conn.tap.frames();
    assert!(close_frames(&log).is_empty(), "{log:#?}");
    assert_eq!(conn.tap.attempts(), log.len(), "no close write was attempted");
}

// ---------------------------------------------------------------------------------------------
// 7. Write timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stuck_write_ends_the_connection_as_slow_client() {
    let room = new_room(64);
    let sessions = Sessions::default();
    let write_timeout = Duration::from_millis(200);
    let config = WriterConfig { write_timeout, ..writer_config() };
    let mut conn = connect(&room, &sessions, ResumeFrom::default(), config);
    conn.hello().await;
    conn.tap.block();
    let started = tokio::time::Instant::now();
    commit(&room, OTHER, None, 1);
    assert_eq!(ended(&mut conn.task).await, CloseReason::SlowClient);
    assert!(started.elapsed() >= write_timeout, "not before the write timeout");
    let log = conn.tap.frames();
    assert_eq!(log.len(), 2, "only the hello got through: {log:#?}");
    assert_eq!(conn.tap.attempts(), 3, "the stuck delta, and no close frame attempted after it");
}

// ---------------------------------------------------------------------------------------------
// 8. Shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_closes_with_1001_within_the_drain_window() {
    let room = new_room(64);
    let sessions = Sessions::default();
    let shutdown_timeout = Duration::from_millis(300);
    let config = WriterConfig { shutdown_timeout, ..writer_config() };
    // Several connections: each picks its own moment in the window, all within it.
    let mut conns: Vec<Conn> =
        (0..3).map(|_| connect(&room, &sessions, ResumeFrom::default(), config.clone())).collect();
    for c in &conns {
        c.hello().await;
    }
    let started = tokio::time::Instant::now();
    for c in &conns {
        c.shutdown.send_replace(true);
    }
    // As `App::begin_drain` does: the writers look at the flag when woken.
    room.wake_listeners();
    for c in &mut conns {
        let reason = tokio::time::timeout_at(started + shutdown_timeout, &mut c.task)
            .await
            .expect("closed within --shutdown-timeout")
            .expect("the writer does not panic");
        assert_eq!(reason, CloseReason::Shutdown);
        let log = c.tap.frames();
        assert_eq!(close_frames(&log).len(), 1, "{log:#?}");
        assert_eq!(log.last().unwrap().close_code(), Some(1001));
    }
}

/// A connection that starts after the drain began closes within the window too (it looks at
/// the flag before it waits, so it needs no wake-up).
#[tokio::test]
async fn a_connection_started_during_the_drain_closes_with_1001_too() {
    let room = new_room(64);
    let sessions = Sessions::default();
    let shutdown_timeout = Duration::from_millis(300);
    let config = WriterConfig { shutdown_timeout, ..writer_config() };
    let mut conn = connect(&room, &sessions, ResumeFrom::default(), config);
    conn.shutdown.send_replace(true);
    let started = tokio::time::Instant::now();
    conn.hello().await;
    let reason = tokio::time::timeout_at(started + shutdown_timeout, &mut conn.task)
        .await
        .expect("closed within --shutdown-timeout")
        .expect("the writer does not panic");
    assert_eq!(reason, CloseReason::Shutdown);
}

// ---------------------------------------------------------------------------------------------
// 9. Control replies and pings
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn control_replies_are_written_in_order() {
    let room = new_room(64);
    let sessions = Sessions::default();
    let mut conn = connect(&room, &sessions, ResumeFrom::default(), writer_config());
    conn.hello().await;
    let error = protocol::error_msg(ErrorCode::Invalid, "nope", Some(ClientReqId(3)));
    conn.reply(Outgoing::Text(error.clone())).await;
    conn.reply(Outgoing::Pong(b"ping-payload".to_vec())).await;
    let log = conn.barrier().await;
    assert_eq!(
        log[2..4],
        [Sent::Text(serde_json::from_slice(&error).unwrap()), Sent::Pong(b"ping-payload".to_vec())],
        "{log:#?}"
    );
    conn.reply(Outgoing::Close(CloseReason::Idle)).await;
    assert_eq!(ended(&mut conn.task).await, CloseReason::Idle);
}

#[tokio::test]
async fn pings_go_out_on_the_interval() {
    let room = new_room(64);
    let sessions = Sessions::default();
    let config = WriterConfig { ping_interval: Duration::from_millis(50), ..writer_config() };
    let conn = connect(&room, &sessions, ResumeFrom::default(), config);
    conn.hello().await;
    let log = conn
        .tap
        .wait_for("two pings", |log| log.iter().filter(|s| matches!(s, Sent::Ping(_))).count() >= 2)
        .await;
    assert!(log.iter().filter_map(|s| if let Sent::Ping(p) = s { Some(p) } else { None }).all(Vec::is_empty));
}
