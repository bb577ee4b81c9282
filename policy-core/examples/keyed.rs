//! Makes `Policy::check` decisions in a loop, to count their instructions with callgrind and
//! their allocations with a counting allocator (BENCHMARKS.md §1, "The keyed decision"): run it
//! with 0 and with N iterations and divide the difference by N.
//!
//! ```sh
//! cargo build --release -p policy-core --example keyed
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/keyed hot 1000
//! ```
//!
//! Cases: `hot` (one known key, every request admitted: the table read, the decision and the
//! write), and `random:USERS` (USERS keys, all placed before the loop, each request for a key
//! picked at random, so every set is a cache miss once the table outgrows the cache). The store
//! is a vector of sets indexed by the set number (the cheapest store the `Store` trait allows):
//! what is counted is policy-core's own work plus one copy of the set in and out.
//!
//! It prints the allocations made inside the loop (the requests are built before it).
#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use policy_core::store::{copy_if_fits, Versioned};
use policy_core::{Cas, HeaderList, Nanos, Outcome, Policy, Store, StoreError};

/// Counts every allocation (and reallocation) of the process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[allow(unsafe_code)] // a GlobalAlloc is an unsafe trait; this one only forwards to System
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const T0: Nanos = Nanos(1_700_000_000_000_000_000);

/// Sets in a vector indexed by the number at the end of the key.
#[derive(Default)]
struct VecStore {
    sets: Vec<Option<(Vec<u8>, NonZeroU32)>>,
    next_cas: u32,
}

fn set_index(key: &str) -> usize {
    let digits = key.len() - key.bytes().rev().take_while(u8::is_ascii_digit).count();
    key.get(digits..)
        .and_then(|d| d.parse().ok())
        .unwrap_or_default()
}

impl Store for VecStore {
    fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self
            .sets
            .get(set_index(key))
            .and_then(|s| s.as_ref())
            .map(|(v, c)| (v.clone(), Some(Cas(*c)))))
    }

    fn get_into(
        &mut self,
        key: &str,
        buf: &mut [u8],
    ) -> Result<Option<(usize, Option<Cas>)>, StoreError> {
        Ok(self
            .sets
            .get(set_index(key))
            .and_then(|s| s.as_ref())
            .map(|(v, c)| {
                copy_if_fits(v, buf);
                (v.len(), Some(Cas(*c)))
            }))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        let i = set_index(key);
        if self.sets.len() <= i {
            self.sets.resize(i + 1, None);
        }
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        let next = NonZeroU32::new(self.next_cas).unwrap_or(NonZeroU32::MIN);
        match self.sets.get_mut(i) {
            Some(Some((v, c))) => {
                if cas.is_some_and(|Cas(expected)| expected != *c) {
                    return Err(StoreError::CasMismatch);
                }
                v.clear();
                v.extend_from_slice(value);
                *c = next;
            }
            Some(slot) => *slot = Some((value.to_vec(), next)),
            None => return Err(StoreError::Unavailable),
        }
        Ok(())
    }
}

fn request(user: &str) -> HeaderList {
    [
        (":authority", "127.0.0.1:10000"),
        (":path", "/api/v1/tasks"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-user-id", user),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "0b5ad1a6-6f0d-4c7e-9f4b-3c1de2a1f00d"),
    ]
    .into_iter()
    .collect()
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(case), Some(Ok(n))) = (args.next(), args.next().map(|n| n.parse::<u64>())) else {
        eprintln!("usage: keyed hot|random:USERS ITERATIONS");
        return ExitCode::FAILURE;
    };
    let users: u32 = match case.as_str() {
        "hot" => 1,
        other => match other.strip_prefix("random:").map(str::parse) {
            Some(Ok(u)) if u > 0 => u,
            _ => {
                eprintln!("unknown case {other}");
                return ExitCode::FAILURE;
            }
        },
    };
    // 5 per second, burst 5: with every user visited about once per 250 ms of fake time, each
    // bucket stays partly drained (an active way) and every request is admitted.
    let json = format!(
        r#"{{"max_keys":{},"tiers":[{{"name":"users","identity":{{"header":"x-user-id"}},
            "limits":[{{"requests":5,"per":"second"}}]}}]}}"#,
        (users * 2).max(8)
    );
    let policy = match Policy::from_json(json.as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut store = VecStore::default();
    if policy.init_store(&mut store).is_err() {
        return ExitCode::FAILURE;
    }
    let requests: Vec<HeaderList> = (0..users).map(|u| request(&format!("user-{u}"))).collect();
    let step = 250_000_000 / u64::from(users);
    let mut now = T0;
    for h in &requests {
        now = Nanos(now.0 + step);
        policy.check(h, now, &mut store);
    }
    // A fixed pseudo-random sequence (xorshift), the same for every build.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut allowed = 0u64;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let Some(h) = requests.get((x % u64::from(users)) as usize) else {
            return ExitCode::FAILURE;
        };
        now = Nanos(now.0 + step);
        if let Outcome::Decided { decision, .. } = policy.check(black_box(h), now, &mut store) {
            allowed += u64::from(decision.allowed);
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!("{case}: {n} decisions, {allowed} allowed, {allocations} allocations");
    ExitCode::SUCCESS
}
