//! Shared harness for integration tests: the real server, in-process on a free port, and a
//! WebSocket client (tokio-tungstenite: an independent WebSocket implementation) that checks the
//! stream as it reads it. Every wait is bounded.
#![allow(dead_code)]

pub mod redis;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ringsync::app::App;
use ringsync::config::Config;
use ringsync::patch;
use ringsync::server;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
    /// The temporary data directory `start` gave a config that named none (removed on drop).
    _data: Option<tempfile::TempDir>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn ws_url(&self, room: &str, query: &str) -> String {
        format!("ws://{}/v1/rooms/{room}/ws{}{query}", self.addr, if query.is_empty() { "" } else { "?" })
    }
    /// Begins graceful shutdown and waits for `run` to return.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task).await.expect("server stops").unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The real binary as a command, without the `RINGSYNC_*` variables of the shell that runs the
/// tests (they are the server's flags; a test passes every flag it means explicitly).
///
/// It runs in the system's temporary directory, so a server started without `--data-dir` never
/// writes `ringsync-data` into the checkout.
pub fn binary() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringsync"));
    cmd.current_dir(std::env::temp_dir());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RINGSYNC_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The real binary on a free port (`--listen 127.0.0.1:0`, then `args`), stderr discarded; a
/// caller that wants the logs or a wrapper adjusts the command and passes it to
/// [`Spawned::start`].
///
/// Without `--data-dir` (or `--redis`) in `args` it runs `--memory-only`, so no test writes to the working
/// directory; tests of durability pass a temporary `--data-dir`.
pub fn server_command(args: &[&str]) -> std::process::Command {
    let mut cmd = binary();
    cmd.args(["--listen", "127.0.0.1:0"]).args(args).stderr(std::process::Stdio::null());
    if !args.iter().any(|a| matches!(*a, "--data-dir" | "--memory-only" | "--redis")) {
        cmd.arg("--memory-only");
    }
    cmd
}

/// Starts the real binary: see [`server_command`].
pub fn spawn_server(args: &[&str]) -> Spawned {
    Spawned::start(server_command(args))
}

/// A spawned server process, killed and reaped when dropped (pass or fail).
pub struct Spawned {
    pub child: std::process::Child,
    /// From its "ringsync listening on http://ADDR" stdout line.
    pub addr: SocketAddr,
    /// The rest of its stdout, held open.
    pub stdout: Option<std::io::BufReader<std::process::ChildStdout>>,
}

impl Spawned {
    /// Spawns `cmd` with stdout piped and reads its listening line (bounded wait).
    pub fn start(mut cmd: std::process::Command) -> Spawned {
        let child = cmd.stdout(std::process::Stdio::piped()).spawn().expect("binary starts");
        let mut spawned = Spawned { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)), stdout: None };
        let out = spawned.child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = std::io::BufReader::new(out);
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut out, &mut line);
            let _ = tx.send((line, out));
        });
        let (line, out) = rx.recv_timeout(Duration::from_secs(30)).expect("listening line in time");
        let addr = line.trim().rsplit("http://").next().unwrap_or_default();
        spawned.addr = addr.parse().unwrap_or_else(|_| panic!("listening line: {line:?}"));
        spawned.stdout = Some(out);
        spawned
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Waits (polling, bounded) for the process to exit; panics if it is still running after
    /// `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "exits after the drain");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops a spawned server cleanly (SIGTERM) and waits for it to exit successfully.
pub async fn stop(mut s: Spawned) {
    let pid = s.pid().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(s.wait_exit(Duration::from_secs(20)).await.success());
}

/// Kills a spawned server with SIGKILL (no drain, no flush).
pub fn crash(mut s: Spawned) {
    s.child.kill().unwrap();
    s.child.wait().unwrap();
}

/// Resumes `client`'s session in `room` on a raw socket (`?session&epoch&since`), so the test
/// reads the catch-up itself; returns the socket and the `welcome`.
pub async fn resume_raw(addr: SocketAddr, room: &str, client: &Client, since: u64) -> (Ws, Value) {
    let (s, e) = (&client.session, &client.epoch);
    let url = format!("ws://{addr}/v1/rooms/{room}/ws?session={s}&epoch={e}&since={since}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome = next_json(&mut ws).await.expect("welcome");
    (ws, welcome)
}

/// The next text message as JSON (bounded wait); `None` when the socket closes.
pub async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a message in time")? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// A config for tests: defaults with the given flags (`RINGSYNC_*` variables are not read).
pub fn config(flags: &[&str]) -> Config {
    let mut args = vec!["--listen", "127.0.0.1:0", "--presence-interval", "0", "--shutdown-timeout", "1"];
    args.extend_from_slice(flags);
    Config::from_flags(&args).expect("valid test flags")
}

/// Starts the server in-process. A config left at the default `--data-dir` (and not
/// `--memory-only`) gets a fresh temporary data directory, so every test runs with durable rooms
/// and none shares a directory with another.
pub async fn start(mut config: Config) -> Server {
    config.validate().expect("test config is valid");
    let mut data = None;
    if !config.memory_only && config.data_dir == std::path::Path::new("ringsync-data") {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        config.data_dir = dir.path().to_path_buf();
        data = Some(dir);
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = App::new(config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, app.clone(), async move {
        let _ = stopped.await;
    }));
    let task = tokio::spawn(async move {
        task.await.unwrap().unwrap();
    });
    Server { addr, app, stop: Some(stop), task: Some(task), _data: data }
}

/// A minimal HTTP/1.1 client over a raw socket (no extra dependency; one request per connection).
pub async fn http(server: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    http_at(server.addr, method, path, body, "").await
}

/// [`http`] to any address, with extra header lines (`"Name: value\r\n"` each).
pub async fn http_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &str,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("http response in time").unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// `POST /v1/rooms/{room}/changes` with `ops`; returns the status and body.
pub async fn post_ops(server: &Server, room: &str, ops: Value) -> (u16, Value) {
    let body = json!({ "ops": ops }).to_string();
    http(server, "POST", &format!("/v1/rooms/{room}/changes"), Some(&body)).await
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client that tracks its state and checks the stream is gapless.
pub struct Client {
    pub ws: Ws,
    pub welcome: Value,
    pub client: String,
    pub session: String,
    pub epoch: String,
    pub rev: u64,
    pub state: Value,
    next_req: u64,
    /// Ops of my changes not yet acked, by clientReqId.
    pending: Vec<(u64, Value)>,
    pub acks: Vec<(u64, u64)>,
    pub rejects: Vec<Value>,
    pub others: Vec<Value>,
    pub snapshots: usize,
    pub deltas: usize,
}

impl Client {
    pub async fn connect(server: &Server, room: &str) -> Client {
        Self::connect_query(server, room, "").await
    }

    /// Connects and consumes `welcome` plus the first delta/snapshot.
    pub async fn connect_query(server: &Server, room: &str, query: &str) -> Client {
        Self::connect_at(server.addr, room, query).await
    }

    /// [`Client::connect_query`] to any address (a spawned binary's).
    pub async fn connect_at(addr: SocketAddr, room: &str, query: &str) -> Client {
        Self::connect_with(addr, room, query, None).await
    }

    /// [`Client::connect_at`] with the socket's receive buffer set to `recv_buffer` bytes (the
    /// kernel's floor applies): the server's writes then fill its send buffer quickly.
    pub async fn connect_with(addr: SocketAddr, room: &str, query: &str, recv_buffer: Option<u32>) -> Client {
        let url = format!("ws://{addr}/v1/rooms/{room}/ws{}{query}", if query.is_empty() { "" } else { "?" });
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let stream =
            tokio::time::timeout(WAIT, socket.connect(addr)).await.expect("connect in time").unwrap();
        let connect = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream));
        let (ws, _) = tokio::time::timeout(WAIT, connect)
            .await
            .expect("handshake in time")
            .expect("websocket connects");
        let mut c = Client {
            ws,
            welcome: Value::Null,
            client: String::new(),
            session: String::new(),
            epoch: String::new(),
            rev: 0,
            state: json!({}),
            next_req: 1,
            pending: Vec::new(),
            acks: Vec::new(),
            rejects: Vec::new(),
            others: Vec::new(),
            snapshots: 0,
            deltas: 0,
        };
        let w = c.recv_raw().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c.client = w["client"].as_str().unwrap().to_owned();
        c.session = w["session"].as_str().unwrap().to_owned();
        c.epoch = w["epoch"].as_str().unwrap().to_owned();
        c.next_req = w["lastClientReqId"].as_u64().unwrap() + 1;
        c.welcome = w.clone();
        // Resume: the client says what it holds; tests pass it in the query and set state after.
        if let Some(since) = query.split('&').find_map(|kv| kv.strip_prefix("since=")) {
            c.rev = since.parse().unwrap();
        }
        let first = c.recv_raw().await;
        assert!(first["type"] == "delta" || first["type"] == "snapshot", "{first}");
        c.absorb(&first);
        assert_eq!(c.rev, w["rev"].as_u64().unwrap(), "welcome.rev is what the first frame brings us to");
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Sends a change with a fresh clientReqId; returns the id.
    pub async fn change(&mut self, mode: &str, ops: Value) -> u64 {
        let base = self.rev;
        self.change_base(mode, base, ops).await
    }

    /// Sends a change claiming `base` as the revision it was planned on.
    pub async fn change_base(&mut self, mode: &str, base: u64, ops: Value) -> u64 {
        let id = self.next_req;
        self.next_req += 1;
        self.pending.push((id, ops.clone()));
        self.send(json!({"type": "change", "clientReqId": id, "baseRev": base, "mode": mode, "ops": ops}))
            .await;
        id
    }

    /// Sends an `undo` or `redo` (`ty`) with a fresh clientReqId and any `extra` members; returns
    /// the id. The ack carries the ops.
    pub async fn history(&mut self, ty: &str, extra: Value) -> u64 {
        let mut m = json!({"type": ty});
        for (k, v) in extra.as_object().into_iter().flatten() {
            m[k] = v.clone();
        }
        self.request(m).await
    }

    /// Sends `m` (a change-like message, e.g. a `reverts`) with a fresh clientReqId; returns the
    /// id. A revert's ack carries its ops.
    pub async fn request(&mut self, mut m: Value) -> u64 {
        let id = self.next_req;
        self.next_req += 1;
        self.pending.push((id, m.get("ops").cloned().unwrap_or(Value::Null)));
        m["clientReqId"] = id.into();
        self.send(m).await;
        id
    }

    /// Next text message, whatever it is.
    pub async fn recv_raw(&mut self) -> Value {
        self.recv_raw_within(WAIT).await
    }

    /// As [`Client::recv_raw`], waiting up to `within` (for answers the server may give late
    /// by design, such as a forwarded change's `unavailable` after its timeout).
    pub async fn recv_raw_within(&mut self, within: Duration) -> Value {
        loop {
            let msg = tokio::time::timeout(within, self.ws.next()).await.expect("a message in time");
            match msg.expect("stream open").expect("no websocket error") {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => continue,
            }
        }
    }

    /// Next message, with deltas and snapshots applied to `state`.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(WAIT).await
    }

    /// As [`Client::recv`], waiting up to `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Value {
        let m = self.recv_raw_within(within).await;
        self.absorb(&m);
        m
    }

    pub fn absorb(&mut self, m: &Value) {
        match m["type"].as_str() {
            Some("delta") => {
                self.deltas += 1;
                assert_eq!(m["from"].as_u64().unwrap(), self.rev, "delta stream has no gaps: {m}");
                for e in m["changes"].as_array().unwrap() {
                    let rev = e["rev"].as_u64().unwrap();
                    assert_eq!(rev, self.rev + 1, "entries are consecutive");
                    self.rev = rev;
                    let ops = if let Some(id) = e.get("clientReqId") {
                        let id = id.as_u64().unwrap();
                        assert_eq!(e["client"], self.client.as_str());
                        assert!(!self.acks.iter().any(|(a, _)| *a == id), "ack {id} appears once");
                        self.acks.push((id, rev));
                        let i = self.pending.iter().position(|(p, _)| *p == id).unwrap_or_else(|| {
                            panic!(
                                "ack for a pending change: {m} pending {:?} acks {:?}",
                                self.pending, self.acks
                            )
                        });
                        let sent = self.pending.remove(i).1;
                        // An undo, redo or revert: only the server knew the ops, its ack has them.
                        e.get("ops").cloned().unwrap_or(sent)
                    } else {
                        assert!(e.get("ops").is_some(), "others' entries carry ops: {e}");
                        self.others.push(e.clone());
                        e["ops"].clone()
                    };
                    let ops = patch::parse_patch(ops).unwrap();
                    patch::apply(&mut self.state, &ops).expect("server changes apply");
                }
                assert_eq!(m["to"].as_u64().unwrap(), self.rev);
            }
            Some("snapshot") => {
                self.snapshots += 1;
                self.rev = m["rev"].as_u64().unwrap();
                self.state = m["state"].clone();
                let last = m["lastClientReqId"].as_u64().unwrap();
                self.pending.retain(|(id, _)| *id > last);
            }
            Some("reject") => {
                let id = m["clientReqId"].as_u64().unwrap();
                self.pending.retain(|(p, _)| *p != id);
                self.rejects.push(m.clone());
            }
            _ => {}
        }
    }

    /// Reads until the client holds `rev` (or later) and has no pending changes.
    pub async fn sync_to(&mut self, rev: u64) {
        while self.rev < rev || !self.pending.is_empty() {
            self.recv().await;
        }
    }

    /// Reads until a message of this type arrives (absorbing everything on the way).
    pub async fn until(&mut self, ty: &str) -> Value {
        loop {
            let m = self.recv().await;
            if m["type"] == ty {
                return m;
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Waits for the server to close the connection; returns the close code.
    pub async fn closed(&mut self) -> u16 {
        close_code(&mut self.ws).await
    }
}

/// Reads until the server closes the socket; returns the close code (1005 without one, 1006
/// when the socket ends without a close frame).
pub async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Close(Some(f)))) => return f.code.into(),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return 1006,
        }
    }
}

/// Applies a presence message to a local map, as a client would.
pub fn merge(map: &mut Map<String, Value>, m: &Value) {
    for (k, v) in m["peers"].as_object().unwrap() {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
}

pub fn welcome_map(c: &Client) -> Map<String, Value> {
    c.welcome["presence"].as_object().unwrap().clone()
}

/// Reads presence messages into `map` until `done(map)` holds.
pub async fn presence_until(
    c: &mut Client,
    map: &mut Map<String, Value>,
    done: impl Fn(&Map<String, Value>) -> bool,
) {
    while !done(map) {
        let m = c.recv().await;
        if m["type"] == "presence" {
            merge(map, &m);
        }
    }
}
