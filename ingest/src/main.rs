use anyhow::Context;
use clap::Parser;
use oxcast_ingest::cli::{load_config, Cli, LogFormat, Role};
use oxcast_ingest::server::{self, ServerOptions};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (common, rtmp, http, ops_listen) = match cli.command.unwrap_or(Role::Run(cli.run)) {
        Role::Run(a) => (a.common, Some(a.rtmp), Some(a.http), None),
        Role::Rtmp(a) => (a.common, Some(a.rtmp), None, a.ops_listen),
        Role::Http(a) => (a.common, None, Some(a.http), None),
    };
    init_logging(common.log_format);
    let mut config = load_config(common.config.as_deref())?;
    common.apply(&mut config);
    let rtmp_listen = rtmp.as_ref().map(|r| r.rtmp_listen);
    let http_listen = http.as_ref().map(|h| h.http_listen);
    let player_assets = http.as_ref().map(|h| h.player_assets.clone());
    let lease_namespace = rtmp
        .as_ref()
        .and_then(|r| r.ownership.lease_namespace.clone());
    let replica_id = rtmp.as_ref().and_then(|r| r.ownership.replica_id.clone());
    let rtmp_workers = rtmp.as_ref().and_then(|r| r.rtmp_workers);
    let storage_backlog = rtmp.as_ref().and_then(|r| r.storage_backlog);
    if let Some(r) = rtmp {
        r.apply(&mut config);
    }
    if let Some(h) = &http {
        h.apply(&mut config);
    }
    // For a person at a terminal. With JSON logs (containers) every line
    // of output must be a JSON object, so neither the banner nor the
    // `listening` lines are printed.
    let plain_output = matches!(common.log_format, LogFormat::Text);
    if plain_output {
        eprint!(
            "{}",
            oxcast_ingest::cli::start_banner(
                rtmp_listen,
                http_listen,
                &config,
                player_assets.as_deref()
            )
        );
    }
    let options = ServerOptions {
        rtmp_listen,
        http_listen,
        ops_listen,
        hls_root: common.hls_root,
        hls_key_dir: common.hls_key_dir,
        announce: plain_output,
        config,
        player_assets,
        lease_namespace,
        replica_id,
        rtmp_workers,
        storage_backlog: storage_backlog.unwrap_or(oxcast_ingest::store::writer::DEFAULT_BACKLOG),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: finishing segments and playlists");
            let _ = stop.send(true);
        });
        server::run(options, shutdown).await
    })?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
