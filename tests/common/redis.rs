//! A `redis-server` of the test's own (Debian's, which `scripts/test.sh` installs): on a free
//! port in a temporary directory, stopped by its PID when dropped; and ringsync nodes started
//! against it.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::{Spawned, WAIT, http_at, server_command};

/// An `XRANGE` entry: its id and its field-value pairs.
pub type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// A `redis-server` of the test's own, killed and reaped when dropped.
pub struct Redis {
    pub child: Child,
    pub port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// No persistence.
    pub fn start() -> Redis {
        Redis::start_with(&["--save", "", "--appendonly", "no"])
    }

    pub fn start_with(args: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
        let child = Redis::spawn(port, &args, dir.path());
        let redis = Redis { child, port, args, dir };
        redis.wait_ready();
        redis
    }

    fn spawn(port: u16, args: &[String], dir: &std::path::Path) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(args)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs Debian's redis-server)")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server answers PING in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then the same server again (same port, same directory).
    pub fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Redis::spawn(self.port, &self.args, self.dir.path());
        self.wait_ready();
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn con(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    /// The revisions of the room's stream entries, in stream order.
    pub fn log_revs(&self, room: &str) -> Vec<u64> {
        let ids: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(format!("ringsync:{{{room}}}:log"))
            .arg("-")
            .arg("+")
            .query(&mut self.con())
            .unwrap();
        ids.iter().map(|(id, _)| id.strip_suffix("-0").unwrap().parse().unwrap()).collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn node(redis: &Redis, flags: &[&str]) -> Spawned {
    node_at(&redis.url(), flags)
}

pub fn node_at(url: &str, flags: &[&str]) -> Spawned {
    let mut args = vec!["--redis", url];
    args.extend_from_slice(flags);
    Spawned::start(server_command(&args))
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    http_at(addr, "GET", path, None, "").await
}

pub async fn post(addr: SocketAddr, room: &str, ops: Value) -> (u16, Value) {
    let body = json!({"ops": ops}).to_string();
    http_at(addr, "POST", &format!("/v1/rooms/{room}/changes"), Some(&body), "").await
}

/// Polls `/metrics` (published once a second) until the sample `name` satisfies `ok`.
pub async fn metric_until(addr: SocketAddr, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, m) = get(addr, "/metrics").await;
        let value = m.as_str().unwrap_or_default().lines().find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.parse::<f64>().ok()).flatten()
        });
        if let Some(v) = value.filter(|v| ok(*v)) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} = {value:?} in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn incr(n: i64) -> Value {
    json!([{"op": "incr", "path": "/n", "value": n}])
}

/// The sample `name` of `/metrics` now (0 when absent).
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, m) = get(addr, "/metrics").await;
    m.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}
