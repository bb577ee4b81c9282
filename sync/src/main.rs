//! `tollgate-sync --listen ADDR --redis URL`: see the crate documentation for the protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tollgate_sync::{serve, Limits, RedisConfig, Stats, Store};
use tracing_subscriber::EnvFilter;

/// The service between tollgate's global mode and Redis: Envoy's rate limit service protocol
/// (gRPC) over GCRA buckets in Redis. Stateless; run any number of replicas.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve gRPC on, e.g. 0.0.0.0:8081 (port 0 picks a free one; the chosen address
    /// is printed on stdout as `listening on ADDR`).
    #[arg(long)]
    listen: SocketAddr,
    /// redis://HOST:PORT[/DB] or rediss://… for TLS; a user name may be given, a password may not.
    #[arg(long)]
    redis: String,
    /// File holding the Redis password (one line). Alternatively set TOLLGATE_REDIS_PASSWORD.
    #[arg(long)]
    redis_password_file: Option<PathBuf>,
    /// Bound on each call's Redis round trip (and on connecting); past it the call is answered
    /// UNAVAILABLE.
    #[arg(long, default_value_t = 250)]
    timeout_ms: u64,
    /// What each descriptor of a request adds to --timeout-ms (a sync round of 10,000 keys
    /// takes Redis 0.3–0.4 s on a small machine; with the defaults it is allowed 1.25 s).
    #[arg(long, default_value_t = 100)]
    timeout_per_descriptor_us: u64,
    /// The most descriptors one request may carry.
    #[arg(long, default_value_t = 10_000)]
    max_descriptors: usize,
}

fn password(args: &Args) -> Result<Option<String>, String> {
    if let Some(path) = &args.redis_password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--redis-password-file {}: {e}", path.display()))?;
        let line = text.strip_suffix('\n').unwrap_or(&text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.contains('\n') {
            return Err(format!(
                "--redis-password-file {}: must hold the password on one line",
                path.display()
            ));
        }
        return Ok(Some(line.to_owned()));
    }
    match std::env::var("TOLLGATE_REDIS_PASSWORD") {
        Ok(p) if !p.is_empty() => Ok(Some(p)),
        _ => Ok(None),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: finishing calls in flight"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing calls in flight"),
    }
}

async fn run(args: Args) -> Result<(), String> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let per_descriptor = Duration::from_micros(args.timeout_per_descriptor_us);
    let max_descriptors = args.max_descriptors.max(1);
    let mut config = RedisConfig::new(&args.redis, password(&args)?.as_deref(), timeout)
        .map_err(|e| e.to_string())?;
    config.reply_timeout = timeout.saturating_add(
        per_descriptor.saturating_mul(u32::try_from(max_descriptors).unwrap_or(u32::MAX)),
    );
    let store = Store::new(&config).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    println!("listening on {addr}");
    tracing::info!(%addr, redis = %config.info.addr(), timeout_ms = timeout.as_millis(), "tollgate-sync started");
    let stats = Arc::new(Stats::default());
    let ticker = {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            every.tick().await;
            loop {
                every.tick().await;
                stats.log();
            }
        })
    };
    let limits = Limits {
        timeout,
        per_descriptor,
        max_descriptors,
    };
    let served = serve(
        listener,
        store,
        limits,
        Arc::clone(&stats),
        shutdown_signal(),
    )
    .await;
    ticker.abort();
    stats.log();
    served.map_err(|e| format!("serving: {e}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // rustls needs one process-wide crypto provider for rediss://; ring builds without system
    // libraries. An error means one is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate-sync: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-sync: {e}");
            tracing::error!(error = %e, "exiting");
            ExitCode::FAILURE
        }
    }
}
