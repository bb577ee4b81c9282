//! `tollgate-upstream`: runs one demo upstream.
//!
//! ```text
//! tollgate-upstream [--listen 127.0.0.1:8081] [--version v1|v2] [--app task-api|llm]
//! ```
//! `--app llm` runs the LLM mock (see `tollgate_upstream::llm`) instead of the Task API.
//! Prints `listening on <addr>` on stderr once the socket is bound (so `--listen 127.0.0.1:0`
//! can be used and the port read back).

use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tollgate_upstream::llm::LlmMock;
use tollgate_upstream::server::{serve, Handler, ServerConfig};
use tollgate_upstream::task_api::{ApiVersion, TaskApi};

const USAGE: &str =
    "usage: tollgate-upstream [--listen ADDR:PORT] [--version v1|v2] [--app task-api|llm]";

#[derive(Debug)]
struct Args {
    listen: String,
    version: ApiVersion,
    /// `--app llm`.
    llm: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        listen: "127.0.0.1:8081".into(),
        version: ApiVersion::V1,
        llm: false,
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => parsed.listen = value()?,
            "--version" => parsed.version = value()?.parse().map_err(|e| format!("{e}"))?,
            "--app" => match value()?.as_str() {
                "task-api" => parsed.llm = false,
                "llm" => parsed.llm = true,
                other => return Err(format!("unknown app {other:?} (expected task-api or llm)")),
            },
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("tollgate-upstream: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tollgate-upstream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("tollgate-upstream: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let local = listener
        .local_addr()
        .map_or_else(|_| args.listen.clone(), |a| a.to_string());
    let handler: Arc<dyn Handler> = if args.llm {
        eprintln!("tollgate-upstream: listening on {local} (llm mock)");
        Arc::new(LlmMock::new())
    } else {
        eprintln!(
            "tollgate-upstream: listening on {local} (task-api {})",
            args.version
        );
        Arc::new(TaskApi::new(args.version))
    };
    match serve(listener, handler, ServerConfig::default()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}
