//! The request-limit decision allocates nothing (issue 14): a counting global allocator around
//! `Policy::check` for a known key, over `MemoryStore` (which copies a value out of its own map
//! through `Store::get_into` and overwrites in place, as Envoy's shared data does).
//!
//! Counted per thread, so the harness's other threads do not disturb the count.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use policy_core::{HeaderList, MemoryStore, Nanos, Outcome, Policy};

    struct Counting;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    fn count() {
        // `try_with`: the thread-local may already be gone while a thread shuts down.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }

    #[allow(unsafe_code)] // a GlobalAlloc is an unsafe trait; this one only forwards to System
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: forwarded unchanged.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded unchanged.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            // SAFETY: forwarded unchanged.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }

    const T0: Nanos = Nanos(1_700_000_000_000_000_000);

    /// A request as Envoy hands it over, the identity among other headers.
    fn request(user: &str) -> HeaderList {
        [
            (":authority", "api.example.com"),
            (":path", "/v1/tasks"),
            (":method", "GET"),
            ("x-user-id", user),
            ("x-request-id", "0b5ad1a6-6f0d-4c7e-9f4b-3c1de2a1f00d"),
        ]
        .into_iter()
        .collect()
    }

    /// Decides `n` requests of `h` `step` apart (after one to place the key) and returns the
    /// allocations made by those `n`, and how many were allowed.
    fn decide(policy: &str, h: &HeaderList, n: u64, step: u64) -> (u64, u64) {
        let policy = Policy::from_json(policy.as_bytes()).unwrap();
        let mut store = MemoryStore::new();
        policy.init_store(&mut store).unwrap();
        let mut now = T0;
        assert!(matches!(
            policy.check(h, now, &mut store),
            Outcome::Decided { .. }
        ));
        let before = allocations();
        let mut allowed = 0;
        for _ in 0..n {
            now = Nanos(now.0 + step);
            match policy.check(h, now, &mut store) {
                Outcome::Decided { decision, .. } => allowed += u64::from(decision.allowed),
                other => panic!("{other:?}"),
            }
        }
        (allocations() - before, allowed)
    }

    const ONE_LIMIT: &str = r#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
        "limits":[{"requests":5,"per":"second"}]}]}"#;

    const TWO_LIMITS: &str = r#"{"tiers":[
        {"name":"internal","match":{"path_prefix":"/internal"},"identity":"shared",
         "limits":[{"requests":10,"per":"second"}]},
        {"name":"users","identity":{"header":"x-user-id"},
         "limits":[{"requests":100,"per":"second","burst":100},
                   {"requests":1000000,"per":"day"}]}]}"#;

    #[test]
    fn an_allowed_decision_for_a_known_key_allocates_nothing() {
        // One request every 200 ms against 5 per second: every one is allowed.
        let (allocated, allowed) = decide(ONE_LIMIT, &request("alice"), 1_000, 200_000_000);
        assert_eq!(allowed, 1_000);
        assert_eq!(allocated, 0, "allocations in 1,000 allowed decisions");
    }

    #[test]
    fn two_limits_a_skipped_tier_and_case_folding_allocate_nothing() {
        let (allocated, allowed) = decide(
            TWO_LIMITS,
            &request("  Alice.Example@Corp.COM "),
            1_000,
            10_000_000,
        );
        assert_eq!(allowed, 1_000);
        assert_eq!(allocated, 0, "allocations in 1,000 allowed decisions");
    }

    #[test]
    fn a_denied_decision_allocates_nothing() {
        // Time nearly standing still: the burst of 5 goes, then every request is denied.
        let (allocated, allowed) = decide(ONE_LIMIT, &request("alice"), 1_000, 1);
        assert_eq!(allowed, 4);
        assert_eq!(allocated, 0, "allocations in 1,000 decisions");
    }

    #[test]
    fn a_tier_of_more_than_four_limits_takes_one_allocation() {
        // A decision keeps four limits' states in place (`policy_core::decision::Limits`).
        let five = r#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
            "limits":[{"requests":100,"per":"second","burst":100},{"requests":10000,"per":"minute"},
                      {"requests":100000,"per":"hour"},{"requests":1000000,"per":"day"},
                      {"requests":10000000,"per":"week"}]}]}"#;
        let (allocated, allowed) = decide(five, &request("alice"), 100, 10_000_000);
        assert_eq!((allocated, allowed), (100, 100));
    }

    #[test]
    fn an_identity_too_long_to_keep_in_place_is_the_one_allocation() {
        // Past `policy_core::id::INLINE` bytes the identity goes to the heap: the count is
        // exact, so the test above cannot pass by a counter that misses allocations.
        let long = "u".repeat(policy_core::id::INLINE + 1);
        let (allocated, allowed) = decide(ONE_LIMIT, &request(&long), 100, 200_000_000);
        assert_eq!((allocated, allowed), (100, 100));
    }
}
