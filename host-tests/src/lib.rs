//! A wasmtime host that plays Envoy's side of proxy-wasm ABI 0.2.1, so tests can drive the very
//! `.wasm` Envoy loads.
//!
//! Why not the proxy-wasm test framework: it keeps host state in globals, writes guest memory
//! unchecked and stubs shared data with an error. Here every instance has its own state, every
//! guest pointer is bounds-checked (a bad one gets `InvalidMemoryAccess`), shared data follows
//! Envoy's CAS semantics exactly, and several instances share one store and one virtual clock the
//! way Envoy's workers do. Tests can inject CAS conflict storms, store failures and any status from
//! any import ([`Faults`]), and a trap or
//! an endless loop comes back as an error carrying the filter's last error log line.
//!
//! ```no_run
//! use std::time::Duration;
//! use host_tests::{Harness, Outcome, Plugin};
//!
//! # fn main() -> Result<(), host_tests::HostError> {
//! let plugin = Plugin::tollgate()?; // compile once, share across tests
//! let policy = r#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
//!                   "limits":[{"requests":2,"per":"second"}]}]}"#;
//! let h = Harness::new(&plugin).workers(4).configure(policy)?;
//! assert!(h.request(0, &[("x-user-id", "alice")])?.is_continue());
//! assert!(h.request(1, &[("x-user-id", "alice")])?.is_continue());
//! match h.request(2, &[("x-user-id", "alice")])? {
//!     Outcome::LocalReply { status, headers, .. } => {
//!         assert_eq!(status, 429);
//!         assert_eq!(headers.get("retry-after"), Some("1"));
//!     }
//!     other => panic!("expected a 429, got {other:?}"),
//! }
//! h.advance(Duration::from_secs(1))?;
//! assert!(h.request(3, &[("x-user-id", "alice")])?.is_continue());
//! # Ok(())
//! # }
//! ```
//!
//! Layers, from the bottom: bounds-checked guest memory access, the host functions (listed in
//! [`IMPLEMENTED_IMPORTS`]), [`Vm`] (one instance, one worker), [`Harness`] (N workers, whole
//! requests) and [`Stream`] (one request step by step).

pub mod abi;
pub mod calls;
pub mod clock;
pub mod error;
pub mod faults;
pub mod harness;
pub mod headers;
mod imports;
pub(crate) mod memory;
pub mod metrics;
pub mod outcome;
pub mod plugin;
pub mod record;
pub mod shared;
pub mod shared_data;
mod signatures;
pub mod state;
pub mod stream;
pub mod vm;

pub use abi::{Action, BufferType, LogLevel, MapType, MetricType, Status, StreamType};
pub use calls::Calls;
pub use clock::Clock;
pub use error::HostError;
pub use faults::Faults;
pub use harness::{Harness, HarnessBuilder, Request, Response};
pub use headers::Headers;
pub use metrics::Metrics;
pub use outcome::Outcome;
pub use plugin::Plugin;
pub use record::{
    Body, GrpcCallout, HttpCallout, HttpReply, LocalReply, LogRecord, Properties, StreamRecord,
};
pub use shared::{Queues, Shared};
pub use shared_data::{FailFor, SharedData, StoreStats};
pub use signatures::IMPLEMENTED_IMPORTS;
pub use stream::Stream;
pub use vm::{Vm, VmOptions};
