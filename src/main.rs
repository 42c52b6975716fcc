//! The `ringsync` binary: parse config, set up logs and metrics, bind, serve until a signal.

use anyhow::Context as _;
use clap::Parser as _;
use ringsync::app::App;
use ringsync::config::{Config, LogFormat};
use ringsync::server;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // Before the runtime starts any thread (see the function's doc).
    ringsync::memory::use_one_malloc_arena();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("check-data") {
        std::process::exit(check_data(std::env::args().nth(2)));
    }
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    // Logs go to stderr; stdout carries only the "listening on" line, for scripts.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => {
            tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).init()
        }
        LogFormat::Json => {
            tracing_subscriber::fmt().json().with_writer(std::io::stderr).with_env_filter(filter).init()
        }
    }
    ignore_file_size_signal();
    let open_files = raise_open_file_limit();
    let listener = server::bind(config.listen)
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let addr = listener.local_addr()?;
    let metrics_listen = config.metrics_listen;
    let storage = if config.memory_only {
        "memory only (--memory-only): rooms are lost when the server stops".to_string()
    } else if config.redis.is_some() {
        "rooms stored in Redis (--redis): one owner per room, by lease".to_string()
    } else {
        let fsync = format!("{:?}", config.fsync).to_lowercase();
        format!("rooms stored in {} (--fsync {fsync})", config.data_dir.display())
    };
    // Key and token files are read once, here; a bad one stops the server like any invalid flag.
    let app = match App::try_new(config) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Some(addr) = metrics_listen {
        let l = server::bind(addr).with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
        tokio::spawn(server::run_metrics(l, app.clone()));
        tracing::info!(%addr, "metrics listener");
    }
    // Printed on stdout so scripts and tests can find a port chosen with --listen ...:0.
    println!("ringsync listening on http://{addr}");
    tracing::info!(%addr, "listening; open http://{addr}/ in two tabs");
    tracing::info!("{storage}");
    tracing::info!(
        limit = open_files,
        store_segments = ringsync::app::open_segment_cap(),
        "open files (RLIMIT_NOFILE raised to its hard limit): connections and the store's open log segments share it"
    );
    server::run(listener, app, shutdown_signal()).await?;
    Ok(())
}

/// `ringsync check-data DIR`: verifies a data directory offline (reading only) and prints each
/// room's revision, epoch, sizes and any damage. Exit status 0 when nothing is damaged, 1 when
/// something is, 2 when the directory cannot be read.
fn check_data(dir: Option<String>) -> i32 {
    let Some(dir) = dir else {
        eprintln!("usage: ringsync check-data DIR");
        return 2;
    };
    let reports = match ringsync::store::file::check(std::path::Path::new(&dir)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut damaged = 0;
    for r in &reports {
        let or_none = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let rev = r.last_rev.max(r.snapshot_rev);
        println!(
            "room {}: epoch {}, rev {}, snapshot at {}, log {}..{} ({} records), {} bytes{}",
            r.room,
            r.epoch,
            or_none(rev),
            or_none(r.snapshot_rev),
            or_none(r.first_rev),
            or_none(r.last_rev),
            r.records,
            r.bytes,
            if r.damage.is_empty() { "" } else { ", DAMAGED:" }
        );
        for d in &r.damage {
            println!("  {d}");
        }
        damaged += usize::from(!r.damage.is_empty());
    }
    println!("{} rooms, {damaged} damaged", reports.len());
    match ringsync::store::file::check_wal(std::path::Path::new(&dir)) {
        Ok(wal) if wal.entries > 0 || !wal.damage.is_empty() => {
            println!(
                "write-ahead log: {} entries in {} files ({} bytes) not yet checkpointed: the next start replays them into the rooms above",
                wal.entries, wal.files, wal.bytes
            );
            for d in &wal.damage {
                println!("  ends early (a round never acknowledged; ignored): {d}");
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("error: {e}"),
    }
    i32::from(damaged > 0)
}

/// Raises the soft limit on open files to the hard one (as Go's runtime does for every
/// program): each connection and each active stored room's log segment holds a descriptor, and
/// the soft default (often 1024) would refuse connections long before the hard limit. Returns
/// the limit in effect.
fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    }
}

/// A write past the file-size limit (`RLIMIT_FSIZE`) raises SIGXFSZ, which would kill the
/// process; with a handler installed the write fails with `EFBIG` instead, and the store
/// treats it like a full disk (the change is rejected `unavailable`, the server carries on).
fn ignore_file_size_signal() {
    #[cfg(target_os = "linux")]
    {
        const SIGXFSZ: i32 = 25;
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ)) {
            tokio::spawn(async move { while s.recv().await.is_some() {} });
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
