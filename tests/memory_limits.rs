//! Memory limits, measured on the real process: a ring full of large changes stays near
//! `--history-bytes` in RSS, empty rooms cost a few KiB, broadcasts nobody can receive are not
//! kept, every limit has a finite default, and `--max-memory` refuses new rooms and big changes
//! with `memory_full` while the rooms already in memory keep working.
//!
//! RSS figures come from `/proc/PID/status` of a spawned `ringsync` binary; bounds are generous
//! (the findings they guard against were 5-20x over them) and nothing is timed. Every process a
//! test starts is killed when the test ends, pass or fail. The heap estimates behind the
//! accounting are checked against a counting global allocator (per thread, so tests running
//! beside it do not disturb it). `memory_figures` (ignored) measures the figures of
//! docs/BENCHMARKS.md's "Memory" section.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Spawned, binary, close_code, config, http, post_ops, server_command, start};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;

/// The binary (killed on drop), with its /proc readings.
struct Proc {
    server: Spawned,
    addr: String,
}

impl Proc {
    fn spawn(flags: &[&str]) -> Proc {
        // One back-end posting thousands of requests a second from one IP: past the default
        // --rate-http, which is not what these tests measure.
        let mut args = vec!["--log-format", "json", "--rate-http", "0"];
        args.extend_from_slice(flags);
        let mut cmd = server_command(&args);
        cmd.env("RUST_LOG", "warn");
        let server = Spawned::start(cmd);
        let addr = server.addr.to_string();
        Proc { server, addr }
    }

    /// A field of /proc/PID/status, in bytes (`VmRSS`, `VmHWM`).
    fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.server.pid())).expect("status");
        let line = status.lines().find(|l| l.starts_with(field)).expect("field present");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number");
        kib * 1024
    }

    fn rss(&self) -> u64 {
        self.status_bytes("VmRSS:")
    }

    async fn conn(&self) -> KeepAlive {
        KeepAlive::connect(&self.addr).await
    }
}

/// A minimal keep-alive HTTP/1.1 client, so thousands of requests do not cost thousands of
/// connections.
struct KeepAlive {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl KeepAlive {
    async fn connect(addr: &str) -> KeepAlive {
        let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        KeepAlive { stream: tokio::io::BufReader::new(s) }
    }

    async fn request(&mut self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // One write: head and body in two would wait on Nagle's algorithm for each request.
        let mut req = head.into_bytes();
        req.extend_from_slice(body.as_bytes());
        self.stream.get_mut().write_all(&req).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.response()).await.expect("response in time")
    }

    async fn response(&mut self) -> (u16, Value) {
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let status: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status line");
        let mut len = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn post_ops(&mut self, room: &str, ops: &Value) -> (u16, Value) {
        self.request("POST", &format!("/v1/rooms/{room}/changes"), &json!({ "ops": ops }).to_string()).await
    }
}

/// A change replacing each of `keys` members with a 16-character string.
fn replace_all(keys: usize, round: usize, op: &str) -> Value {
    let ops: Vec<Value> = (0..keys)
        .map(|i| json!({"op": op, "path": format!("/k{i}"), "value": format!("{round:>7}-{i:>8}")}))
        .collect();
    Value::Array(ops)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_of_thousand_op_changes_stays_near_history_bytes_in_rss() {
    let budget = 16 * MIB;
    let p = Proc::spawn(&["--history-bytes", &budget.to_string()]);
    let mut c = p.conn().await;
    // The state: 1,000 members, then a few rounds so the allocator has warmed up.
    for round in 0..3 {
        let (s, v) = c.post_ops("ring", &replace_all(1000, round, "add")).await;
        assert_eq!(s, 200, "{v}");
    }
    let before = p.rss();
    // Each change replaces every member: the state stays the same size, only the ring grows,
    // until its byte budget drops the oldest changes.
    for round in 3..250 {
        let (s, v) = c.post_ops("ring", &replace_all(1000, round, "replace")).await;
        assert_eq!(s, 200, "{v}");
    }
    let grown = p.rss().saturating_sub(before);
    eprintln!(
        "ring of 1,000-op changes: RSS grew {} KiB for --history-bytes {} KiB",
        grown >> 10,
        budget >> 10
    );
    assert!(grown <= budget * 3 / 2, "RSS grew {grown} bytes for a history budget of {budget}");
    // The room still serves everything the ring holds.
    let (s, v) = c.request("GET", "/v1/rooms/ring", "").await;
    assert_eq!((s, v["rev"].as_u64()), (200, Some(250)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_rooms_cost_a_few_kib_each() {
    const ROOMS: usize = 20_000;
    const TASKS: usize = 4;
    let p = Proc::spawn(&["--max-rooms", &ROOMS.to_string()]);
    // Warm up: a few rooms, so the baseline includes the runtime's and the maps' first blocks.
    let mut c = p.conn().await;
    for i in 0..200 {
        let (s, v) = c.post_ops(&format!("warm{i}"), &json!([{"op": "add", "path": "/a", "value": 1}])).await;
        assert_eq!(s, 200, "{v}");
    }
    drop(c);
    let before = p.rss();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut c = p.conn().await;
        tasks.push(tokio::spawn(async move {
            for i in (t..ROOMS - 200).step_by(TASKS) {
                let (s, v) =
                    c.post_ops(&format!("room{i}"), &json!([{"op": "add", "path": "/a", "value": 1}])).await;
                assert_eq!(s, 200, "{v}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let per_room = p.rss().saturating_sub(before) / (ROOMS as u64 - 200);
    eprintln!("RSS per room with one small change: {per_room} bytes");
    assert!(per_room < 6 * 1024, "{per_room} bytes per room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_into_rooms_with_nobody_connected_hold_nothing() {
    let p = Proc::spawn(&[]);
    let mut c = p.conn().await;
    let data = "b".repeat(1_000_000);
    let body = json!({ "data": data }).to_string();
    let rooms = 3;
    for r in 0..rooms {
        let (s, _) =
            c.post_ops(&format!("quiet{r}"), &json!([{"op": "add", "path": "/a", "value": 1}])).await;
        assert_eq!(s, 200);
    }
    // Warm up the body path, then measure.
    for _ in 0..4 {
        let (s, v) = c.request("POST", "/v1/rooms/quiet0/broadcast", &body).await;
        assert_eq!(s, 200, "{v}");
    }
    let before = p.rss();
    for r in 0..rooms {
        for _ in 0..64 {
            let (s, v) = c.request("POST", &format!("/v1/rooms/quiet{r}/broadcast"), &body).await;
            assert_eq!(s, 200, "{v}");
        }
    }
    let grown = p.rss().saturating_sub(before);
    eprintln!("{rooms} rooms x 64 broadcasts of 1 MB with nobody connected: RSS grew {} KiB", grown >> 10);
    assert!(grown < 48 * MIB, "RSS grew {grown} bytes");
}

/// `[default: N]` of `flag` in `--help`.
fn help_default(help: &str, flag: &str) -> Option<u64> {
    let start = help.find(&format!("{flag} <"))?;
    let rest = &help[start..];
    let end = rest.find("\n  -").unwrap_or(rest.len());
    let d = rest[..end].split("[default: ").nth(1)?;
    d.split(']').next()?.parse().ok()
}

#[test]
fn every_limit_has_a_finite_default() {
    let help = binary().arg("--help").output().expect("binary runs");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--max-memory",
        "--max-rooms",
        "--max-connections",
        "--max-room-clients",
        "--history-bytes",
        "--broadcast-buffer-bytes",
        "--max-state-bytes",
    ] {
        let d = help_default(&help, flag);
        assert!(d.is_some_and(|d| d > 0), "{flag} has a finite default, got {d:?}");
    }
}

/// Reads the metrics until `name` satisfies `ok` (the gauges are refreshed once a second).
async fn metric_until(server: &common::Server, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = http(server, "GET", "/metrics", None).await;
        let v = m
            .as_str()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok());
        if let Some(v) = v
            && ok(v)
        {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} = {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_memory_refuses_new_rooms_and_big_changes_while_existing_rooms_work() {
    let limit = 32 * MIB;
    let server = start(config(&["--max-memory", &limit.to_string(), "--max-rooms", "10000"])).await;
    let blob = "m".repeat(256 * 1024);
    // Fill the budget with state (history is shed first; state is not): a room per value, until
    // new rooms are refused ...
    let mut rooms = 0;
    let refusal = loop {
        let (s, v) =
            post_ops(&server, &format!("f{rooms}"), json!([{"op": "add", "path": "/v", "value": blob}]))
                .await;
        if s != 200 {
            break v;
        }
        rooms += 1;
        assert!(rooms < 1000, "never refused");
    };
    assert!(rooms > 16, "refused early, after {rooms} rooms: {refusal}");
    assert_eq!(refusal["code"], "memory_full", "{refusal}");
    // ... then values in one room until changes are refused too.
    let mut values = 0;
    let refusal = loop {
        let (s, v) =
            post_ops(&server, "f0", json!([{"op": "add", "path": format!("/v{values}"), "value": blob}]))
                .await;
        if s != 200 {
            break v;
        }
        values += 1;
        assert!(values < 1000, "never refused");
    };
    assert_eq!(refusal["code"], "memory_full", "{refusal}");
    // A new room is refused over HTTP (503) ...
    let (s, v) = post_ops(&server, "newroom", json!([{"op": "add", "path": "/x", "value": 1}])).await;
    assert_eq!((s, v["code"].as_str()), (503, Some("memory_full")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("--max-memory"), "{v}");
    // ... and over a WebSocket (close 4008).
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("newroom2", "")).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 4008);
    // Existing rooms keep working: small changes commit, readers join and converge.
    let (s, v) = post_ops(&server, "f0", json!([{"op": "replace", "path": "/v", "value": "small"}])).await;
    assert_eq!(s, 200, "{v}");
    let mut a = Client::connect(&server, "f1").await;
    assert_eq!(a.state["v"].as_str().map(str::len), Some(blob.len()));
    a.change("overwrite", json!([{"op": "add", "path": "/n", "value": 1}])).await;
    a.sync_to(2).await;
    assert!(a.rejects.is_empty(), "{:?}", a.rejects);
    // A big change is refused with a reject the author can act on; the room is unchanged.
    let id = a.change("overwrite", json!([{"op": "add", "path": "/big", "value": blob.repeat(3)}])).await;
    let r = a.until("reject").await;
    assert_eq!((r["clientReqId"].as_u64(), r["code"].as_str()), (Some(id), Some("memory_full")), "{r}");
    let (_, room) = http(&server, "GET", "/v1/rooms/f1", None).await;
    assert_eq!((room["rev"].as_u64(), room["state"].get("big")), (Some(2), None));
    // Over HTTP the same refusal is a 503 with the reject body.
    let (s, v) =
        post_ops(&server, "f2", json!([{"op": "add", "path": "/big", "value": blob.repeat(3)}])).await;
    assert_eq!((s, v["code"].as_str()), (503, Some("memory_full")), "{v}");
    // The gauge shows the accounted bytes within the budget, and refusals are counted.
    let used = metric_until(&server, "ringsync_memory_accounted_bytes", |v| v > 0.0).await;
    assert!(used <= limit as f64, "{used}");
    let (_, m) = http(&server, "GET", "/metrics", None).await;
    let m = m.as_str().unwrap();
    for what in ["room", "change"] {
        let key = format!("ringsync_memory_refusals_total{{what=\"{what}\"}} ");
        let n: f64 = m.lines().find_map(|l| l.strip_prefix(&key)?.parse().ok()).unwrap_or(0.0);
        assert!(n >= 1.0, "{key}{n}");
    }
    drop(a);
}

/// Counts the heap blocks live on each thread, so an estimate can be checked against what was
/// really allocated (per thread: other tests run beside this one).
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use ringsync::memory::chunk;

    pub struct Counting;

    /// Live bytes, blocks and allocator chunks on this thread.
    type Live = (isize, isize, isize);

    thread_local! {
        static LIVE: Cell<Live> = const { Cell::new((0, 0, 0)) };
    }

    fn note(old: usize, new: usize, blocks: isize) {
        let _ = LIVE.try_with(|c| {
            let (b, n, r) = c.get();
            let bytes = new as isize - old as isize;
            let chunks = chunk(new) as isize - chunk(old) as isize;
            c.set((b + bytes, n + blocks, r + chunks));
        });
    }

    // SAFETY: every call is passed on to the system allocator unchanged; counting has no effect
    // on the memory returned.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            note(0, l.size(), 1);
            // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
            unsafe { System.alloc(l) }
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            note(0, l.size(), 1);
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            note(l.size(), 0, -1);
            // SAFETY: `p` was allocated by `System` with `l` (every allocation goes through here).
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            note(l.size(), new, 0);
            // SAFETY: as for `dealloc`, with the caller's new size.
            unsafe { System.realloc(p, l, new) }
        }
    }

    /// Runs `f` and returns its value with what it left allocated on this thread: bytes,
    /// blocks, and the chunks they occupy (glibc's rounding, as `memory::chunk` models it).
    pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Live) {
        let (b0, n0, r0) = LIVE.with(Cell::get);
        let v = f();
        let (b1, n1, r1) = LIVE.with(Cell::get);
        (v, (b1 - b0, n1 - n0, r1 - r0))
    }
}

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

/// Each of an estimate's bytes, blocks and chunks is within 30 % of what was allocated.
fn near_heap(what: &str, estimate: ringsync::memory::Heap, (bytes, blocks, chunks): (isize, isize, isize)) {
    near(&format!("{what}: bytes"), estimate.bytes, bytes);
    near(&format!("{what}: blocks"), estimate.blocks, blocks);
    near(&format!("{what}: resident"), estimate.total(), chunks);
}

/// `estimate` is within 30 % of `measured`.
fn near(what: &str, estimate: usize, measured: isize) {
    let (e, m) = (estimate as f64, measured as f64);
    eprintln!("{what}: estimated {e}, allocated {m} ({:+.0} %)", (e / m - 1.0) * 100.0);
    assert!((e - m).abs() <= 0.3 * m, "{what}: estimated {e}, allocated {m}");
}

#[test]
fn heap_estimates_match_a_counting_allocator() {
    use ringsync::ids::{ClientId, ClientReqId, RoomId};
    use ringsync::memory;
    use ringsync::patch;
    use ringsync::protocol::Mode;
    use ringsync::room::{ChangeRequest, Room, RoomConfig};

    let docs = [
        (
            "1,000 small members",
            json!((0..1000).map(|i| (format!("k{i}"), json!(i))).collect::<serde_json::Map<_, _>>()),
        ),
        (
            "nested arrays",
            json!((0..200).map(|i| json!([i, [i, "x"], {"a": [1, 2, 3]}])).collect::<Vec<_>>()),
        ),
        ("long strings", json!({"a": "x".repeat(100_000), "b": ["y".repeat(5000), "z".repeat(7000)]})),
        (
            "objects of objects",
            json!(
                (0..300)
                    .map(|i| (
                        format!("player{i}"),
                        json!({"x": i, "y": 2 * i, "name": format!("n{i}"), "tags": ["a", "b"]})
                    ))
                    .collect::<serde_json::Map<_, _>>()
            ),
        ),
    ];
    for (what, doc) in &docs {
        let text = doc.to_string();
        let (parsed, live) = counting::measure(|| serde_json::from_str::<Value>(&text).unwrap());
        near_heap(&format!("{what}, parsed"), memory::value_heap(&parsed), live);
        let (cloned, live) = counting::measure(|| parsed.clone());
        near_heap(&format!("{what}, cloned"), memory::value_heap(&cloned), live);
        near_heap(&format!("{what}, clone predicted"), memory::cloned_heap(&parsed), live);
    }

    // A 1,000-op change as the server decodes it.
    let text = replace_all(1000, 1, "replace").to_string();
    let (ops, live) = counting::measure(|| patch::parse_patch(serde_json::from_str(&text).unwrap()).unwrap());
    near_heap("1,000 ops", memory::ops_heap(&ops, memory::Origin::Parsed), live);

    // A committed 1,000-op change: replacing values with values of the same shape leaves the
    // state's size as it was, so what the commit leaves allocated is what the change holds.
    let room = Room::new(RoomId::parse("heap").unwrap(), RoomConfig { history: 64, ..RoomConfig::default() });
    let request = |round: usize, op: &str| ChangeRequest {
        author: ClientId(1),
        user: None,
        client_req_id: Some(ClientReqId(round as u64)),
        base_rev: None,
        mode: Mode::Overwrite,
        ops: patch::parse_patch(replace_all(1000, round, op)).unwrap(),
        extras: Default::default(),
    };
    room.commit(request(0, "add")).unwrap();
    for round in 1..5 {
        room.commit(request(round, "replace")).unwrap();
    }
    let text = replace_all(1000, 5, "replace").to_string();
    let (change, live) = counting::measure(|| {
        let ops = patch::parse_patch(serde_json::from_str(&text).unwrap()).unwrap();
        let req = ChangeRequest { ops, ..request(5, "replace") };
        room.commit(req).unwrap()
    });
    near_heap("committed 1,000-op change", change.heap(), live);
    let encoded = change.delta_frame.len();
    eprintln!("footprint {} for {encoded} encoded bytes", change.footprint());

    // The state's growth, estimated op by op: what a commit leaves allocated besides the change.
    let scenarios = [
        ("add 1,000 members", json!((0..1000).map(|i| json!({"op": "add", "path": format!("/n{i}"), "value": {"x": i, "name": format!("p{i}")}})).collect::<Vec<_>>())),
        ("add a big value", json!([{"op": "add", "path": "/big", "value": (0..1000).map(|i| json!([i, "abc"])).collect::<Vec<_>>()}])),
        ("copy it", json!([{"op": "copy", "from": "/big", "path": "/big2"}])),
        // 1,000 appends double the 1,000-element array once: the estimate spreads the doubling
        // over the appends, one spare slot each.
        ("append 1,000 elements", json!((0..1000).map(|i| json!({"op": "add", "path": "/big/-", "value": [i]})).collect::<Vec<_>>())),
    ];
    for (round, (what, ops)) in scenarios.into_iter().enumerate() {
        let text = ops.to_string();
        let (change, (_, _, chunks)) = counting::measure(|| {
            let ops = patch::parse_patch(serde_json::from_str(&text).unwrap()).unwrap();
            room.commit(ChangeRequest { ops, ..request(100 + round, "add") }).unwrap()
        });
        let state = chunks - change.footprint() as isize;
        let growth = memory::state_growth(&change.ops, &change.inverse, &room.state().1);
        near(&format!("state growth, {what}"), growth.max(0) as usize, state);
    }
}

/// Settles the server, then reads its RSS: the median of a few reads a moment apart.
async fn settled_rss(p: &Proc) -> u64 {
    let mut reads = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        reads.push(p.rss());
    }
    reads.sort();
    reads[1]
}

/// WebSocket clients that read their welcome and first frame, then stay connected.
async fn connect_clients(addr: &str, n: usize, rooms: usize) -> Vec<common::Ws> {
    use futures_util::StreamExt;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let url = format!("ws://{addr}/v1/rooms/live{}/ws", i % rooms);
        let (mut ws, _) =
            tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url))
                .await
                .expect("connect in time")
                .expect("connects");
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("welcome in time");
        }
        out.push(ws);
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The figures of docs/BENCHMARKS.md, "Memory" (medians of 3 fresh servers each):
/// `cargo test --release --test memory_limits memory_figures -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for docs/BENCHMARKS.md, not a check"]
async fn memory_figures() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    const ROOMS: usize = 20_000;
    const CLIENTS: usize = 2_000;
    let (mut room, mut idle, mut live, mut quiet) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rings: Vec<(u64, Vec<f64>)> = [16 * MIB, 64 * MIB].into_iter().map(|b| (b, Vec::new())).collect();
    for _ in 0..3 {
        // Rooms created over HTTP, each with one small change.
        let p = Proc::spawn(&["--max-rooms", "100000"]);
        let mut c = p.conn().await;
        for i in 0..200 {
            c.post_ops(&format!("warm{i}"), &json!([{"op": "add", "path": "/a", "value": 1}])).await;
        }
        let before = settled_rss(&p).await;
        for i in 0..ROOMS {
            c.post_ops(&format!("room{i}"), &json!([{"op": "add", "path": "/a", "value": 1}])).await;
        }
        room.push((settled_rss(&p).await - before) as f64 / ROOMS as f64);

        // Broadcasts into rooms nobody is in: 5 rooms x 64 of 1 MB.
        let body = json!({ "data": "b".repeat(1_000_000) }).to_string();
        for r in 0..5 {
            c.request("POST", &format!("/v1/rooms/room{r}/broadcast"), &body).await;
        }
        let before = settled_rss(&p).await;
        for r in 0..5 {
            for _ in 0..64 {
                c.request("POST", &format!("/v1/rooms/room{r}/broadcast"), &body).await;
            }
        }
        quiet.push((settled_rss(&p).await.saturating_sub(before) >> 20) as f64);
        drop(p);

        // Idle connections, then the same clients live (presence and one change each).
        let p = Proc::spawn(&["--presence-interval", "50"]);
        let warm = connect_clients(&p.addr, 50, 20).await;
        let before = settled_rss(&p).await;
        let mut clients = connect_clients(&p.addr, CLIENTS, 20).await;
        let connected = settled_rss(&p).await;
        idle.push((connected - before) as f64 / CLIENTS as f64);
        for (i, ws) in clients.iter_mut().enumerate() {
            let presence =
                json!({"type": "presence", "data": {"x": i, "y": i, "name": format!("player-{i}")}});
            let change = json!({"type": "change", "clientReqId": 1, "ops": [{"op": "add", "path": format!("/p{i}"), "value": {"x": i, "y": i}}]});
            ws.send(Message::text(presence.to_string())).await.unwrap();
            ws.send(Message::text(change.to_string())).await.unwrap();
        }
        // Let the fan-out finish (each change reaches its room's 100 clients), reading nothing:
        // the server's side of it is what is measured.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let active = settled_rss(&p).await;
        live.push((active - before) as f64 / CLIENTS as f64);
        drop((clients, warm, p));

        // A ring of 1,000-op changes at its byte budget.
        for (budget, growth) in &mut rings {
            let p = Proc::spawn(&["--history-bytes", &budget.to_string()]);
            let mut c = p.conn().await;
            c.post_ops("ring", &replace_all(1000, 0, "add")).await;
            let before = settled_rss(&p).await;
            // Enough changes to fill the ring past its budget (as accounted before and after
            // the fix: ~130 KB and ~630 KB a change), up to its 1,024 entries.
            let changes = *budget / (64 * 1024);
            for round in 1..=changes as usize {
                let (s, v) = c.post_ops("ring", &replace_all(1000, round, "replace")).await;
                assert_eq!(s, 200, "{v}");
            }
            growth.push((settled_rss(&p).await - before) as f64 / *budget as f64);
        }
    }
    eprintln!("per room (one small change, over HTTP): {:.0} B (runs {room:?})", median(room.clone()));
    eprintln!("per idle connection: {:.0} B (runs {idle:?})", median(idle.clone()));
    eprintln!("per live client (presence + one change): {:.0} B (runs {live:?})", median(live.clone()));
    eprintln!(
        "5 rooms x 64 broadcasts of 1 MB, nobody connected: {:.0} MiB (runs {quiet:?})",
        median(quiet.clone())
    );
    for (budget, growth) in rings {
        eprintln!(
            "ring at --history-bytes {} MiB: RSS growth {:.2}x (runs {growth:?})",
            budget >> 20,
            median(growth.clone())
        );
    }
}
