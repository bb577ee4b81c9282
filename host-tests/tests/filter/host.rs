//! The host's own guarantees, proven against the hand-written probe module: bounds checks, Envoy's
//! shared-data semantics, the virtual clock and ticks, the SDK's header-map format, Envoy's buffer
//! rewriting, and that traps and endless loops come back as errors.

use std::time::{Duration, Instant};

use host_tests::vm::ROOT_CONTEXT_ID;
use host_tests::{
    Action, FailFor, Harness, Headers, HostError, HttpReply, Shared, SharedData, Status,
    StreamType, Vm, VmOptions, IMPLEMENTED_IMPORTS,
};

use crate::support::probe;

/// Scratch addresses inside the probe's memory (see probe.wat).
const KEY: u32 = 0;
const VALUE: u32 = 64;
const RET_PTR: i32 = 1024;
const RET_LEN: i32 = 1028;
const RET_CAS: i32 = 1032;
const RET_TIME: i32 = 1040;
const MEMORY_END: i32 = 65536;

const OK: i32 = Status::Ok as i32;
const NOT_FOUND: i32 = Status::NotFound as i32;
const BAD_ARGUMENT: i32 = Status::BadArgument as i32;
const INVALID_MEMORY: i32 = Status::InvalidMemoryAccess as i32;
const CAS_MISMATCH: i32 = Status::CasMismatch as i32;
const INTERNAL_FAILURE: i32 = Status::InternalFailure as i32;

fn started_vm(shared: &Shared) -> Vm {
    let mut vm = Vm::new(probe(), shared, &VmOptions::default()).unwrap();
    assert!(vm.start().unwrap());
    vm
}

fn word(vm: &mut Vm, at: i32) -> u32 {
    u32::from_le_bytes(vm.read_memory(at as u32, 4).unwrap().try_into().unwrap())
}

/// Reads what the host returned through `(RET_PTR, RET_LEN)`.
fn returned(vm: &mut Vm) -> Vec<u8> {
    let (ptr, len) = (word(vm, RET_PTR), word(vm, RET_LEN));
    vm.read_memory(ptr, len as usize).unwrap()
}

fn get_shared(vm: &mut Vm, key: &[u8]) -> i32 {
    vm.write_memory(KEY, key).unwrap();
    vm.call(
        "get_shared",
        ROOT_CONTEXT_ID,
        (KEY as i32, key.len() as i32, RET_PTR, RET_LEN, RET_CAS),
    )
    .unwrap()
}

fn set_shared(vm: &mut Vm, key: &[u8], value: &[u8], cas: u32) -> i32 {
    vm.write_memory(KEY, key).unwrap();
    vm.write_memory(VALUE, value).unwrap();
    let args = (
        KEY as i32,
        key.len() as i32,
        VALUE as i32,
        value.len() as i32,
        cas as i32,
    );
    vm.call("set_shared", ROOT_CONTEXT_ID, args).unwrap()
}

#[test]
fn the_host_implements_all_39_abi_imports_once() {
    let mut names = IMPLEMENTED_IMPORTS.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 39);
    assert!(names.contains(&"proxy_get_buffer_status"));
    assert!(names.contains(&"proxy_get_header_map_size"));
}

#[test]
fn bad_guest_pointers_get_invalid_memory_access_not_a_host_panic() {
    let shared = Shared::new();
    let mut vm = started_vm(&shared);
    let status = |vm: &mut Vm, name: &'static str, args: (i32, i32, i32)| -> i32 {
        vm.call(name, ROOT_CONTEXT_ID, args).unwrap()
    };
    // A message running past the end of memory, and one whose end overflows u32.
    assert_eq!(
        status(&mut vm, "log", (2, MEMORY_END - 6, 10)),
        INVALID_MEMORY
    );
    assert_eq!(status(&mut vm, "log", (2, -16, 32)), INVALID_MEMORY);
    assert_eq!(status(&mut vm, "log", (2, 0, -1)), INVALID_MEMORY);
    // An out-of-range enum is a bad argument, not a crash.
    assert_eq!(status(&mut vm, "log", (9, 0, 1)), BAD_ARGUMENT);
    // An 8-byte out-slot straddling the end.
    let now: i32 = vm.call("now", ROOT_CONTEXT_ID, MEMORY_END - 4).unwrap();
    assert_eq!(now, INVALID_MEMORY);
    let now: i32 = vm.call("now", ROOT_CONTEXT_ID, MEMORY_END - 8).unwrap();
    assert_eq!(now, OK);
    // Shared data with a key or value outside memory.
    let get: i32 = vm
        .call(
            "get_shared",
            ROOT_CONTEXT_ID,
            (MEMORY_END, 1, RET_PTR, RET_LEN, RET_CAS),
        )
        .unwrap();
    assert_eq!(get, INVALID_MEMORY);
    let set: i32 = vm
        .call(
            "set_shared",
            ROOT_CONTEXT_ID,
            (KEY as i32, 1, MEMORY_END - 10, 100, 0),
        )
        .unwrap();
    assert_eq!(set, INVALID_MEMORY);
    assert_eq!(shared.data().key_count("tollgate"), 0);
}

#[test]
fn a_bad_out_pointer_is_refused_before_the_guest_allocates() {
    let h = Harness::new(probe())
        .configure("some configuration")
        .unwrap();
    let mut vm = h.worker(0).unwrap();
    let heap: i32 = vm.call("heap_top", ROOT_CONTEXT_ID, ()).unwrap();
    let args = (7, 0, -1, MEMORY_END + 8, RET_LEN);
    assert_eq!(
        vm.call::<_, i32>("get_buffer", ROOT_CONTEXT_ID, args)
            .unwrap(),
        INVALID_MEMORY
    );
    assert_eq!(
        vm.call::<_, i32>("heap_top", ROOT_CONTEXT_ID, ()).unwrap(),
        heap
    );
}

#[test]
fn returned_data_goes_through_the_guest_allocator_with_the_exact_size() {
    let h = Harness::new(probe())
        .configure("some configuration")
        .unwrap();
    let mut vm = h.worker(0).unwrap();
    let before: i32 = vm.call("heap_top", ROOT_CONTEXT_ID, ()).unwrap();
    // usize::MAX as max_size, exactly as the SDK asks for its configuration.
    let args = (7, 0, -1, RET_PTR, RET_LEN);
    assert_eq!(
        vm.call::<_, i32>("get_buffer", ROOT_CONTEXT_ID, args)
            .unwrap(),
        OK
    );
    assert_eq!(word(&mut vm, RET_PTR) as i32, before);
    assert_eq!(returned(&mut vm), b"some configuration");
    let after: i32 = vm.call("heap_top", ROOT_CONTEXT_ID, ()).unwrap();
    assert_eq!(after - before, 18);
    // A window of the buffer.
    let args = (7, 5, 6, RET_PTR, RET_LEN);
    assert_eq!(
        vm.call::<_, i32>("get_buffer", ROOT_CONTEXT_ID, args)
            .unwrap(),
        OK
    );
    assert_eq!(returned(&mut vm), b"config");
}

#[test]
fn shared_data_cas_starts_at_1_and_a_stale_cas_is_a_mismatch() {
    let shared = Shared::new();
    let mut vm = started_vm(&shared);
    assert_eq!(get_shared(&mut vm, b"bucket"), NOT_FOUND);
    assert_eq!(set_shared(&mut vm, b"bucket", b"v1", 0), OK);
    assert_eq!(get_shared(&mut vm, b"bucket"), OK);
    assert_eq!(returned(&mut vm), b"v1");
    assert_eq!(word(&mut vm, RET_CAS), 1);
    assert_eq!(set_shared(&mut vm, b"bucket", b"v2", 1), OK);
    assert_eq!(set_shared(&mut vm, b"bucket", b"v3", 1), CAS_MISMATCH);
    assert_eq!(get_shared(&mut vm, b"bucket"), OK);
    assert_eq!(returned(&mut vm), b"v2");
    assert_eq!(word(&mut vm, RET_CAS), 2);
}

#[test]
fn setting_a_missing_key_ignores_the_cas_so_two_inserts_both_succeed() {
    let shared = Shared::new();
    let mut first = started_vm(&shared);
    let mut second = started_vm(&shared);
    assert_eq!(set_shared(&mut first, b"new-user", b"first", 777), OK);
    assert_eq!(get_shared(&mut second, b"new-user"), OK);
    assert_eq!(returned(&mut second), b"first");
    // An existing key does check it, across instances too.
    assert_eq!(
        set_shared(&mut second, b"new-user", b"second", 777),
        CAS_MISMATCH
    );
}

#[test]
fn the_cas_counter_is_process_wide_and_skips_zero_when_it_wraps() {
    let store = SharedData::with_next_cas(u32::MAX);
    store.set("a", b"k", b"1", 0).unwrap();
    assert_eq!(store.get("a", b"k").unwrap().1, u32::MAX);
    store.set("b", b"k", b"1", 0).unwrap();
    assert_eq!(store.get("b", b"k").unwrap().1, 1);
}

#[test]
fn vm_ids_have_separate_maps() {
    let shared = Shared::new();
    let mut one = started_vm(&shared);
    let mut other = Vm::new(
        probe(),
        &shared,
        &VmOptions {
            vm_id: "other".into(),
            ..VmOptions::default()
        },
    )
    .unwrap();
    assert!(other.start().unwrap());
    assert_eq!(set_shared(&mut one, b"k", b"v", 0), OK);
    assert_eq!(get_shared(&mut other, b"k"), NOT_FOUND);
}

#[test]
fn injected_conflicts_and_failures_reach_the_guest_then_heal() {
    let shared = Shared::new();
    let mut vm = started_vm(&shared);
    shared.data().inject_cas_conflicts(2);
    assert_eq!(set_shared(&mut vm, b"k", b"v", 0), CAS_MISMATCH);
    assert_eq!(set_shared(&mut vm, b"k", b"v", 0), CAS_MISMATCH);
    assert_eq!(set_shared(&mut vm, b"k", b"v", 0), OK);
    shared.data().fail_gets(FailFor::Next(1));
    shared.data().fail_sets(FailFor::Always);
    assert_eq!(get_shared(&mut vm, b"k"), INTERNAL_FAILURE);
    assert_eq!(get_shared(&mut vm, b"k"), OK);
    assert_eq!(set_shared(&mut vm, b"k", b"w", 0), INTERNAL_FAILURE);
    assert_eq!(set_shared(&mut vm, b"k", b"w", 0), INTERNAL_FAILURE);
    shared.data().clear_faults();
    assert_eq!(set_shared(&mut vm, b"k", b"w", 0), OK);
    let stats = shared.data().stats();
    assert_eq!((stats.cas_mismatches, stats.injected_failures), (2, 3));
    assert_eq!(shared.data().key_count("tollgate"), 1);
    assert_eq!(shared.data().total_bytes("tollgate"), 2);
}

#[test]
fn a_rendezvous_makes_two_workers_read_the_same_cas_so_one_write_loses() {
    let h = Harness::new(probe()).workers(2).configure("").unwrap();
    h.store().set(h.vm_id(), b"k", b"v", 0).unwrap();
    h.store().rendezvous_next_gets(2);
    let mut results: Vec<(u32, i32)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let h = &h;
                scope.spawn(move || {
                    let mut vm = h.worker(worker).unwrap();
                    assert_eq!(get_shared(&mut vm, b"k"), OK);
                    let cas = word(&mut vm, RET_CAS);
                    (cas, set_shared(&mut vm, b"k", b"w", cas))
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    results.sort_unstable();
    assert_eq!(results, vec![(1, OK), (1, CAS_MISMATCH)]);
    assert_eq!(h.store().stats().rendezvous_timeouts, 0);
}

#[test]
fn the_clock_is_virtual_shared_and_drives_ticks_at_their_exact_instants() {
    let h = Harness::new(probe()).workers(2).configure("").unwrap();
    let start = 1_000_000_000_000;
    h.set_time(start);
    let mut vm = h.worker(1).unwrap();
    assert_eq!(
        vm.call::<_, i32>("now", ROOT_CONTEXT_ID, RET_TIME).unwrap(),
        OK
    );
    let now = vm.read_memory(RET_TIME as u32, 8).unwrap();
    assert_eq!(u64::from_le_bytes(now.try_into().unwrap()), start);
    drop(vm);

    let mut vm = h.worker(0).unwrap();
    assert_eq!(
        vm.call::<_, i32>("set_tick", ROOT_CONTEXT_ID, 1000)
            .unwrap(),
        OK
    );
    assert_eq!(vm.tick_period(), Some(Duration::from_secs(1)));
    drop(vm);
    h.advance(Duration::from_millis(2500)).unwrap();
    assert_eq!(h.now(), start + 2_500_000_000);

    let mut vm = h.worker(0).unwrap();
    assert_eq!(vm.call::<_, i32>("ticks", ROOT_CONTEXT_ID, ()).unwrap(), 2);
    let seen = vm.read_memory(2048, 16).unwrap();
    let at = |i: usize| u64::from_le_bytes(seen[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(
        (at(0), at(1)),
        (start + 1_000_000_000, start + 2_000_000_000)
    );
    drop(vm);
    assert_eq!(
        h.worker(1)
            .unwrap()
            .call::<_, i32>("ticks", ROOT_CONTEXT_ID, ())
            .unwrap(),
        0
    );
}

#[test]
fn a_guest_trap_is_an_error_carrying_the_last_critical_log_line() {
    let shared = Shared::new();
    let mut vm = started_vm(&shared);
    let error = vm.call::<(), ()>("panic", ROOT_CONTEXT_ID, ()).unwrap_err();
    match &error {
        HostError::Trap {
            call,
            last_error_log,
            ..
        } => {
            assert_eq!(*call, "panic");
            assert_eq!(
                last_error_log.as_deref(),
                Some("panicked at src/lib.rs:7:5: boom")
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(error.to_string().contains("boom"), "{error}");
}

#[test]
fn an_endless_loop_runs_out_of_fuel_instead_of_hanging() {
    let options = VmOptions {
        fuel: 10_000_000,
        ..VmOptions::default()
    };
    let mut vm = Vm::new(probe(), &Shared::new(), &options).unwrap();
    let started = Instant::now();
    let error = vm.call::<(), ()>("spin", ROOT_CONTEXT_ID, ()).unwrap_err();
    assert!(
        matches!(error, HostError::Runaway { call: "spin", .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The budget is per call: the VM is usable afterwards.
    assert!(vm.start().unwrap());
}

#[test]
fn a_trap_inside_the_guest_allocator_unwinds_as_a_trap() {
    let h = Harness::new(probe()).configure("cfg").unwrap();
    let mut vm = h.worker(0).unwrap();
    vm.call::<(), ()>("trap_in_malloc", ROOT_CONTEXT_ID, ())
        .unwrap();
    let error = vm
        .call::<_, i32>("get_buffer", ROOT_CONTEXT_ID, (7, 0, -1, RET_PTR, RET_LEN))
        .unwrap_err();
    assert!(matches!(error, HostError::Trap { .. }), "{error:?}");
}

#[test]
fn header_maps_use_the_sdk_wire_format_with_order_and_duplicates() {
    let h = Harness::new(probe()).configure("").unwrap();
    let mut stream = h.stream(0).unwrap();
    let sent = Headers::from_pairs(&[
        (b":path".as_slice(), b"/".as_slice()),
        (b"X-Dup", b"one"),
        (b"x-dup", b"two"),
        (b"x-bin", b"\xff\x00\x01"),
    ]);
    assert_eq!(
        stream.request_headers(sent.clone(), true).unwrap(),
        Action::Continue
    );
    let id = stream.id();
    let mut vm = h.worker(0).unwrap();
    assert_eq!(
        vm.call::<_, i32>("get_pairs", id, (0, RET_PTR, RET_LEN))
            .unwrap(),
        OK
    );
    let bytes = returned(&mut vm);
    assert_eq!(&bytes[..4], &4u32.to_le_bytes());
    assert_eq!(&bytes[4..12], &[5, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(&bytes[36..44], b":path\0/\0");
    assert_eq!(Headers::deserialize(&bytes).unwrap(), sent);
    assert_eq!(sent.get("x-dup"), Some("one"));

    // A single value: the first of duplicates, looked up case-insensitively like Envoy.
    vm.write_memory(KEY, b"X-DUP").unwrap();
    let args = (0, KEY as i32, 5, RET_PTR, RET_LEN);
    assert_eq!(vm.call::<_, i32>("get_value", id, args).unwrap(), OK);
    assert_eq!(returned(&mut vm), b"one");
    vm.write_memory(KEY, b"absent").unwrap();
    let args = (0, KEY as i32, 6, RET_PTR, RET_LEN);
    assert_eq!(vm.call::<_, i32>("get_value", id, args).unwrap(), NOT_FOUND);
    // Response headers do not exist yet in the request phase: Envoy says BadArgument.
    assert_eq!(
        vm.call::<_, i32>("get_pairs", id, (2, RET_PTR, RET_LEN))
            .unwrap(),
        BAD_ARGUMENT
    );

    // Writing a map back replaces it whole.
    let replacement = Headers::from_pairs(&[("a", "1"), ("a", "2")]).serialize();
    vm.write_memory(VALUE, &replacement).unwrap();
    let args = (0, VALUE as i32, replacement.len() as i32);
    assert_eq!(vm.call::<_, i32>("set_pairs", id, args).unwrap(), OK);
    // A truncated map is a parse failure.
    let args = (0, VALUE as i32, replacement.len() as i32 - 6);
    assert_eq!(
        vm.call::<_, i32>("set_pairs", id, args).unwrap(),
        Status::ParseFailure as i32
    );
    drop(vm);
    let record = stream.finish().unwrap();
    assert_eq!(
        record.request_headers,
        Some(Headers::from_pairs(&[("a", "1"), ("a", "2")]))
    );
}

#[test]
fn body_rewrites_follow_envoy_buffer_semantics() {
    let h = Harness::new(probe()).configure("").unwrap();
    let mut stream = h.stream(0).unwrap();
    stream.request_headers(&[(":path", "/")], false).unwrap();
    // The probe pauses in on_request_body, so chunks accumulate like Envoy's buffer.
    assert_eq!(
        stream.request_body(b"hello ", false).unwrap(),
        Action::Pause
    );
    assert_eq!(stream.request_body(b"world", false).unwrap(), Action::Pause);
    let id = stream.id();
    let set = |data: &[u8], start: i32, size: i32| -> i32 {
        let mut vm = h.worker(0).unwrap();
        vm.write_memory(VALUE, data).unwrap();
        vm.call(
            "set_buffer",
            id,
            (0, start, size, VALUE as i32, data.len() as i32),
        )
        .unwrap()
    };
    let body = || stream_body(&h, id);
    assert_eq!(body(), b"hello world");
    // start 0 replaces the first `size` bytes.
    assert_eq!(set(b"HOWDY", 0, 5), OK);
    assert_eq!(body(), b"HOWDY world");
    // start 0, size 0 prepends; start >= len appends.
    assert_eq!(set(b">", 0, 0), OK);
    assert_eq!(set(b"!", 12, 0), OK);
    assert_eq!(body(), b">HOWDY world!");
    // A range in the middle is refused, as in Envoy.
    assert_eq!(set(b"x", 3, 1), BAD_ARGUMENT);
    // start 0 with the whole length replaces everything.
    assert_eq!(set(b"new", 0, 13), OK);
    assert_eq!(body(), b"new");
    let mut vm = h.worker(0).unwrap();
    let args = (0, 1, 1, RET_PTR, RET_LEN);
    assert_eq!(vm.call::<_, i32>("get_buffer", id, args).unwrap(), OK);
    assert_eq!(returned(&mut vm), b"e");
    drop(vm);
    let record = stream.reset().unwrap();
    assert!(record.reset_by_downstream);
    assert!(record.request_body.forwarded.is_empty());
}

fn stream_body(h: &Harness, id: u32) -> Vec<u8> {
    h.worker(0)
        .unwrap()
        .stream(id)
        .unwrap()
        .request_body
        .buffered
        .clone()
}

#[test]
fn properties_are_looked_up_by_nul_joined_path_segments() {
    let h = Harness::new(probe()).configure("").unwrap();
    let mut stream = h.stream(0).unwrap();
    let path = [
        "metadata",
        "filter_metadata",
        "envoy.filters.http.jwt_authn",
        "payload",
        "sub",
    ];
    stream.set_property(&path, "alice").unwrap();
    let id = stream.id();
    let mut vm = h.worker(0).unwrap();
    let raw = path.join("\0");
    vm.write_memory(KEY, raw.as_bytes()).unwrap();
    let args = (KEY as i32, raw.len() as i32, RET_PTR, RET_LEN);
    assert_eq!(vm.call::<_, i32>("get_property", id, args).unwrap(), OK);
    assert_eq!(returned(&mut vm), b"alice");
    let args = (KEY as i32, raw.len() as i32 - 1, RET_PTR, RET_LEN);
    assert_eq!(
        vm.call::<_, i32>("get_property", id, args).unwrap(),
        NOT_FOUND
    );
}

#[test]
fn a_local_reply_passes_back_through_the_filters_response_callbacks() {
    let h = Harness::new(probe()).configure("").unwrap();
    let mut stream = h.stream(0).unwrap();
    stream.request_headers(&[(":path", "/")], true).unwrap();
    let id = stream.id();
    let mut vm = h.worker(0).unwrap();
    let headers = Headers::from_pairs(&[("x-why", "because")]).serialize();
    vm.write_memory(VALUE, &headers).unwrap();
    vm.write_memory(KEY, b"nope").unwrap();
    let args = (
        418,
        0,
        0,
        KEY as i32,
        4,
        VALUE as i32,
        headers.len() as i32,
        -1,
    );
    assert_eq!(vm.call::<_, i32>("local_response", id, args).unwrap(), OK);
    drop(vm);
    // The reply is sent when the current callback returns; here, at the next step.
    stream.request_body(b"", true).unwrap();
    assert!(stream.answered());
    let record = stream.finish().unwrap();
    let reply = record.local_reply.unwrap();
    assert_eq!(
        (reply.status, reply.grpc_status, reply.body.as_slice()),
        (418, None, b"nope".as_slice())
    );
    let sent = record.response_headers.unwrap();
    assert_eq!(sent.get(":status"), Some("418"));
    assert_eq!(sent.get("x-why"), Some("because"));
    assert_eq!(sent.get("content-type"), Some("text/plain"));
    assert_eq!(record.response_body.forwarded, b"nope");
}

#[test]
fn http_callouts_are_recorded_and_replies_are_injected_into_the_calling_stream() {
    let h = Harness::new(probe()).configure("").unwrap();
    let mut stream = h.stream(0).unwrap();
    stream.request_headers(&[(":path", "/")], false).unwrap();
    let id = stream.id();
    let mut vm = h.worker(0).unwrap();
    vm.write_memory(KEY, b"auth").unwrap();
    let call = |vm: &mut Vm, headers: &Headers| -> i32 {
        let bytes = headers.serialize();
        vm.write_memory(VALUE, &bytes).unwrap();
        let args = (
            KEY as i32,
            4,
            VALUE as i32,
            bytes.len() as i32,
            0,
            0,
            0,
            0,
            500,
            RET_PTR,
        );
        vm.call("http_call", id, args).unwrap()
    };
    // Envoy refuses a callout without :method, :path and :authority.
    assert_eq!(
        call(&mut vm, &Headers::from_pairs(&[(":path", "/check")])),
        BAD_ARGUMENT
    );
    let headers = Headers::from_pairs(&[
        (":method", "GET"),
        (":path", "/check"),
        (":authority", "auth"),
    ]);
    assert_eq!(call(&mut vm, &headers), OK);
    let token = word(&mut vm, RET_PTR);
    let pending = vm.pending_http_callouts();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].token, pending[0].context_id), (token, id));
    assert_eq!(
        (pending[0].upstream.as_str(), pending[0].timeout_ms),
        ("auth", 500)
    );
    assert_eq!(pending[0].headers, headers);

    let reply = HttpReply {
        headers: Headers::from_pairs(&[(":status", "200"), ("x-a", "1")]),
        body: b"allowed".to_vec(),
        trailers: Headers::new(),
    };
    vm.deliver_http_reply(token, reply.clone()).unwrap();
    let seen: Vec<u32> = (0..5).map(|i| word(&mut vm, 3072 + 4 * i)).collect();
    assert_eq!(seen, vec![token, 2, 7, 0, 0]);
    let (ptr, len) = (word(&mut vm, 3092), word(&mut vm, 3096));
    assert_eq!(vm.read_memory(ptr, len as usize).unwrap(), b"allowed");
    assert!(vm.pending_http_callouts().is_empty());
    assert!(matches!(
        vm.deliver_http_reply(token, reply),
        Err(HostError::UnknownToken(_))
    ));
    drop(vm);
    let record = stream.finish().unwrap();
    assert_eq!(record.continued, vec![StreamType::HttpRequest]);
}

#[test]
fn a_missing_module_says_how_to_build_it() {
    let error = host_tests::Plugin::from_file("/nonexistent/tollgate.wasm").unwrap_err();
    assert!(matches!(error, HostError::WasmMissing { .. }), "{error:?}");
    assert!(error.to_string().contains("scripts/build-wasm"), "{error}");
}
