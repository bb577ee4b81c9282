//! What every stream of one worker shares: the parsed policy and the counters.
//!
//! Its own module so that the root context (which makes it) and the streams (which use it) both
//! depend on it rather than on each other.

use std::cell::{Cell, RefCell};
use std::ops::{Deref, DerefMut};

use policy_core::{Nanos, Policy};

use crate::global::SyncRounds;
use crate::metrics::Metrics;

/// The policy and the counters, shared by the root context and every stream of the worker.
#[derive(Debug)]
pub struct Plugin {
    pub policy: Policy,
    pub metrics: Metrics,
    /// Global mode's sync rounds, when the policy has global tiers in sync mode.
    pub global: Option<SyncRounds>,
    /// When the last store-failure warning was logged: a broken store must not flood the log
    /// with one line per request.
    last_warning: Cell<Option<Nanos>>,
    /// A buffer for response text the worker's streams take turns with ([`Plugin::text_buffer`]).
    text: RefCell<String>,
}

impl Plugin {
    pub fn new(policy: Policy, metrics: Metrics) -> Plugin {
        Plugin {
            policy,
            metrics,
            global: None,
            last_warning: Cell::new(None),
            text: RefCell::new(String::new()),
        }
    }

    /// With sync mode's state (see [`crate::global`]).
    pub fn with_global(mut self, global: Option<SyncRounds>) -> Plugin {
        self.global = global;
        self
    }

    /// Whether a warning may be logged now (at most once a second per worker).
    pub fn warn_due(&self, now: Nanos) -> bool {
        let due = self
            .last_warning
            .get()
            .is_none_or(|last| now < last || now.0 - last.0 >= Nanos::SECOND.0);
        if due {
            self.last_warning.set(Some(now));
        }
        due
    }

    /// The worker's buffer for response text, lent until the guard is dropped: after the first
    /// requests it is large enough, so writing a response field allocates nothing. Never busy
    /// in practice (one stream runs at a time); if it were, the borrower gets an empty one.
    pub fn text_buffer(&self) -> TextBuffer<'_> {
        TextBuffer {
            buf: self.text.take(),
            plugin: self,
        }
    }
}

/// [`Plugin::text_buffer`]'s loan: a `String` that goes back to the plugin when dropped.
#[derive(Debug)]
pub struct TextBuffer<'p> {
    buf: String,
    plugin: &'p Plugin,
}

impl Deref for TextBuffer<'_> {
    type Target = String;
    fn deref(&self) -> &String {
        &self.buf
    }
}

impl DerefMut for TextBuffer<'_> {
    fn deref_mut(&mut self) -> &mut String {
        &mut self.buf
    }
}

impl Drop for TextBuffer<'_> {
    fn drop(&mut self) {
        if let Ok(mut text) = self.plugin.text.try_borrow_mut() {
            *text = std::mem::take(&mut self.buf);
        }
    }
}
