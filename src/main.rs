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
    let listener = server::bind(config.listen)
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let addr = listener.local_addr()?;
    let metrics_listen = config.metrics_listen;
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
    server::run(listener, app, shutdown_signal()).await?;
    Ok(())
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
