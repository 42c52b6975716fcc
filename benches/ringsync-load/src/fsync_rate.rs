//! `fsync-rate`: the disk's own rate of small durable appends, the floor under `--fsync always`.
//! A loop appends `--bytes` (100) to a file in `--dir` and calls `sync_data` after each, as the
//! store's writer thread does for a round of one change (the file grows, so every sync also
//! writes its size), for the measurement window; it reports syncs per second and each append +
//! sync's latency. `--dir` must be on the filesystem of the server's `--data-dir`. No server is
//! involved; the file is removed afterwards.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

use crate::ctx::histogram;
use crate::harness::Harness;
use crate::report::{Run, latency};

/// The flags of `fsync-rate`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A directory on the filesystem to measure (the server's --data-dir or beside it).
    #[arg(long)]
    pub dir: PathBuf,
    /// Bytes appended before each sync.
    #[arg(long, default_value_t = 100)]
    pub bytes: usize,
}

pub async fn run(h: &mut Harness, a: Args) -> anyhow::Result<Run> {
    ensure!((1..=1 << 20).contains(&a.bytes), "--bytes must be in 1..=1048576");
    let duration = Duration::from_secs_f64(h.o.duration);
    let path = a.dir.join(format!("ringsync-fsync-rate-{}.tmp", std::process::id()));
    let p = path.clone();
    let bytes = a.bytes;
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("cannot create {}", p.display()))?;
        let record = vec![b'r'; bytes];
        let mut lat = histogram();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < duration {
            let t = Instant::now();
            f.write_all(&record)?;
            f.sync_data()?;
            lat.saturating_record((t.elapsed().as_micros() as u64).max(1));
            n += 1;
        }
        Ok((n, start.elapsed(), lat))
    })
    .await?;
    let _ = std::fs::remove_file(&path);
    let (n, took, lat) = result?;
    let mut r = h.base("fsync-rate");
    r.insert("dir".into(), a.dir.display().to_string().into());
    r.insert("bytes".into(), a.bytes.into());
    r.insert("fsyncs".into(), n.into());
    r.insert("fsyncs_per_s".into(), (n as f64 / took.as_secs_f64()).into());
    latency(&mut r, "fsync", &lat);
    h.finish(&mut r, None);
    Ok(r)
}
