//! `startup`: how long a server takes to come up on a data directory, and to serve a stored
//! room. Spawns the server command given after `--` (for example `taskset -c 0
//! target/release/ringsync --listen 127.0.0.1:0 --data-dir D`), times from the spawn to its
//! `ringsync listening on http://ADDR` line, then (with `--room`) polls `GET /v1/rooms/{room}`
//! every millisecond until it answers 200 with a revision of at least `--rev`: rooms load lazily,
//! so that first answer is the room's recovery (newest snapshot, then the log after it). Reports
//! both times, the server's CPU seconds and RSS at that moment, then stops it with SIGTERM and
//! times the shutdown (SIGKILL after `--timeout`). The server's stderr passes through.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::harness::Harness;
use crate::report::{Run, put};
use crate::{http, procfs, scan};

/// The flags of `startup`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A room to fetch once the server listens.
    #[arg(long)]
    pub room: Option<String>,
    /// The revision the room must answer with.
    #[arg(long, default_value_t = 0)]
    pub rev: u64,
    /// The server command and its arguments (it must print `ringsync listening on http://ADDR`
    /// on stdout, as ringsync does).
    #[arg(last = true, required = true)]
    pub server: Vec<String>,
}

pub async fn run(h: &mut Harness, a: Args) -> anyhow::Result<Run> {
    let timeout = Duration::from_secs_f64(h.o.timeout);
    let start = Instant::now();
    let mut child = Command::new(&a.server[0])
        .args(&a.server[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", a.server[0]))?;
    let pid = child.id().to_string();
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the server's stdout to its end, so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("ringsync listening on http://") {
                let _ = tx.send((addr.trim().to_owned(), Instant::now()));
            }
        }
    });
    let result = measure(&a, &rx, start, &pid, timeout).await;
    let stop_at = Instant::now();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let mut stop_s = None;
    while stop_at.elapsed() < timeout {
        if child.try_wait()?.is_some() {
            stop_s = Some(stop_at.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if stop_s.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut r = h.base("startup");
    let m = result?;
    r.insert("room".into(), a.room.clone().map_or(serde_json::Value::Null, Into::into));
    r.insert("rev".into(), m.rev.into());
    r.insert("listen_ms".into(), (m.listen.as_secs_f64() * 1000.0).into());
    put(&mut r, "first_get_ms", m.first_get.map(|d| d.as_secs_f64() * 1000.0));
    put(&mut r, "load_ms", m.first_get.map(|d| (d - m.listen).as_secs_f64() * 1000.0));
    put(&mut r, "server_cpu_s", m.cpu_s);
    put(&mut r, "server_rss_mb", m.rss_kb.map(|kb| kb as f64 / 1024.0));
    put(&mut r, "stop_ms", stop_s.map(|s| s * 1000.0));
    h.finish(&mut r, None);
    Ok(r)
}

/// What one start measured.
struct Measured {
    listen: Duration,
    first_get: Option<Duration>,
    rev: u64,
    cpu_s: Option<f64>,
    rss_kb: Option<u64>,
}

async fn measure(
    a: &Args,
    rx: &std::sync::mpsc::Receiver<(String, Instant)>,
    start: Instant,
    pid: &str,
    timeout: Duration,
) -> anyhow::Result<Measured> {
    let (addr, at) = loop {
        match rx.try_recv() {
            Ok(x) => break x,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => bail!("the server exited before listening"),
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        ensure!(start.elapsed() < timeout, "the server did not listen within --timeout");
        tokio::time::sleep(Duration::from_micros(200)).await;
    };
    let listen = at.duration_since(start);
    let addr: SocketAddr = addr.parse().with_context(|| format!("bad listen address {addr:?}"))?;
    ensure!(addr.ip().is_loopback(), "the server listens on {addr}, not a loopback address");
    let (mut first_get, mut rev) = (None, 0);
    if let Some(room) = &a.room {
        let path = format!("/v1/rooms/{room}");
        loop {
            if let Ok((200, body)) = http::get(addr, &path).await {
                rev = scan::num_after(&body, b"\"rev\":").unwrap_or(0);
                if rev >= a.rev {
                    first_get = Some(start.elapsed());
                    break;
                }
            }
            ensure!(
                start.elapsed() < timeout,
                "room {room} not at rev {} within --timeout (at {rev})",
                a.rev
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let s = procfs::sample(pid);
    Ok(Measured { listen, first_get, rev, cpu_s: s.map(|s| s.cpu_s), rss_kb: s.map(|s| s.rss_kb) })
}
