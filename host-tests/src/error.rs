//! Why a host operation failed. Traps carry the guest's last error log line, because under
//! `panic = "abort"` that line (written by the SDK's panic hook) is the only trace of the cause.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong while loading or driving a filter.
#[derive(Debug)]
#[non_exhaustive]
pub enum HostError {
    /// The `.wasm` file is not where it was looked for.
    WasmMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The `.wasm` file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The engine rejected the module or the linker could not satisfy its imports.
    Load(wasmtime::Error),
    /// The guest lacks an export the call sequence needs.
    MissingExport(&'static str),
    /// The guest trapped (a Rust panic under `panic = "abort"` is an `unreachable` trap).
    Trap {
        /// The export being called.
        call: &'static str,
        /// Wasmtime's description of the trap.
        message: String,
        /// The guest's last Critical or Error log line, usually the panic message.
        last_error_log: Option<String>,
    },
    /// The call ran out of fuel: an endless loop, or a budget set too small.
    Runaway {
        /// The export being called.
        call: &'static str,
        /// The fuel it was given.
        fuel: u64,
    },
    /// A callback returned a value outside its ABI range.
    BadReturn {
        /// The export being called.
        call: &'static str,
        /// What it returned.
        value: i32,
    },
    /// `proxy_on_vm_start` returned false.
    VmStartRejected {
        /// The worker.
        worker: usize,
        /// The guest's last error log line, if any.
        reason: Option<String>,
    },
    /// `proxy_on_configure` returned false: the filter rejected its configuration.
    ConfigureRejected {
        /// The worker.
        worker: usize,
        /// The guest's last error log line: tollgate logs the path and reason there.
        reason: Option<String>,
    },
    /// A worker index beyond the harness's workers.
    NoSuchWorker(usize),
    /// A fault was asked for on an import the host does not implement.
    UnknownImport(String),
    /// A stream step that makes no sense in the stream's state (e.g. a body after a reset).
    StreamState {
        /// The step attempted.
        step: &'static str,
        /// Why it cannot happen now.
        reason: &'static str,
    },
    /// A callout token the host never issued or already answered.
    UnknownToken(u32),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WasmMissing { path } => write!(
                f,
                "filter module not found at {}: run `scripts/build-wasm` (or set TOLLGATE_WASM)",
                path.display()
            ),
            Self::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::Load(error) => write!(f, "cannot load the module: {error:#}"),
            Self::MissingExport(name) => write!(f, "the module does not export `{name}`"),
            Self::Trap {
                call,
                message,
                last_error_log,
            } => {
                write!(f, "guest trapped in `{call}`: {message}")?;
                match last_error_log {
                    Some(line) => write!(f, "; last error log: {line}"),
                    None => write!(f, "; no error was logged"),
                }
            }
            Self::Runaway { call, fuel } => {
                write!(f, "`{call}` did not return within {fuel} units of fuel")
            }
            Self::BadReturn { call, value } => write!(f, "`{call}` returned {value}"),
            Self::VmStartRejected { worker, reason } => {
                write!(f, "worker {worker}: proxy_on_vm_start returned false")?;
                reason.iter().try_for_each(|r| write!(f, ": {r}"))
            }
            Self::ConfigureRejected { worker, reason } => {
                write!(f, "worker {worker}: proxy_on_configure returned false")?;
                reason.iter().try_for_each(|r| write!(f, ": {r}"))
            }
            Self::NoSuchWorker(worker) => write!(f, "no worker {worker}"),
            Self::UnknownImport(name) => {
                write!(f, "no import {name} to fail (see IMPLEMENTED_IMPORTS)")
            }
            Self::StreamState { step, reason } => write!(f, "cannot {step}: {reason}"),
            Self::UnknownToken(token) => write!(f, "no pending callout with token {token}"),
        }
    }
}

impl std::error::Error for HostError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
