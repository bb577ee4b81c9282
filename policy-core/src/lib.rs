//! tollgate's policy core: tiered token buckets and LLM token budgets.
//!
//! The core never reads a clock and never does I/O. Callers pass `now` and a [`store::Store`], so
//! the same code runs natively in tests and benchmarks, under wasmtime with a virtual clock, and in
//! Envoy on proxy-wasm shared data. It is `no_std` (with `alloc`) so that nothing here can reach
//! for the host by accident.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(
    clippy::std_instead_of_core,
    clippy::alloc_instead_of_core,
    clippy::std_instead_of_alloc
)]
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod bucket;
pub mod budget;
pub mod calendar;
pub mod config;
pub mod decimal;
pub mod decision;
pub mod global;
pub mod hash;
pub mod headers;
pub mod id;
pub mod identity;
pub mod llm;
pub mod model_match;
pub mod path;
pub mod pattern;
pub mod policy;
pub mod quota;
pub mod request;
pub mod scope;
pub mod store;
pub mod table;
pub mod tier;
pub mod tier_text;
pub mod time;

pub use config::{ConfigError, Policy};
pub use decision::Decision;
pub use policy::Outcome;
pub use request::{Attributes, HeaderList, Span};
pub use store::{Cas, MemoryStore, Store, StoreError};
pub use time::Nanos;
