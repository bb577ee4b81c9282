;; A minimal hand-written proxy-wasm "filter" for the host's self-tests. It implements the lifecycle
;; exports the harness calls, and re-exports thin wrappers around imports so tests can pass any
;; pointer they like. Memory map: 0..1024 scratch the tests write into, 1024.. out-slots,
;; 32768.. a bump heap behind `malloc`.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))

  (import "env" "proxy_http_call"
    (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))

  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 32768))
  (global $ticks (mut i32) (i32.const 0))
  (global $trap_in_malloc (mut i32) (i32.const 0))

  ;; A bump allocator; `heap_top` lets tests see whether anything was allocated.
  (func (export "malloc") (param $size i32) (result i32)
    (local $ptr i32)
    (if (global.get $trap_in_malloc) (then unreachable))
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $ptr))
  (func (export "heap_top") (result i32) (global.get $heap))
  (func (export "trap_in_malloc") (global.set $trap_in_malloc (i32.const 1)))

  ;; Lifecycle.
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  ;; Pauses so body chunks stay buffered for the buffer tests.
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32))
  ;; Each tick stores the clock at 2048 + 8 * n.
  (func (export "proxy_on_tick") (param i32)
    (drop (call $now (i32.add (i32.const 2048) (i32.mul (global.get $ticks) (i32.const 8)))))
    (global.set $ticks (i32.add (global.get $ticks) (i32.const 1))))
  (func (export "ticks") (result i32) (global.get $ticks))

  ;; Thin wrappers around imports.
  (func (export "log") (param i32 i32 i32) (result i32)
    (call $log (local.get 0) (local.get 1) (local.get 2)))
  (func (export "now") (param i32) (result i32) (call $now (local.get 0)))
  (func (export "set_tick") (param i32) (result i32) (call $set_tick (local.get 0)))
  (func (export "get_buffer") (param i32 i32 i32 i32 i32) (result i32)
    (call $get_buffer (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "set_buffer") (param i32 i32 i32 i32 i32) (result i32)
    (call $set_buffer (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "get_pairs") (param i32 i32 i32) (result i32)
    (call $get_pairs (local.get 0) (local.get 1) (local.get 2)))
  (func (export "set_pairs") (param i32 i32 i32) (result i32)
    (call $set_pairs (local.get 0) (local.get 1) (local.get 2)))
  (func (export "get_value") (param i32 i32 i32 i32 i32) (result i32)
    (call $get_value (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "get_shared") (param i32 i32 i32 i32 i32) (result i32)
    (call $get_shared (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "set_shared") (param i32 i32 i32 i32 i32) (result i32)
    (call $set_shared (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "get_property") (param i32 i32 i32 i32) (result i32)
    (call $get_property (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "local_response") (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (call $local_response (local.get 0) (local.get 1) (local.get 2) (local.get 3)
      (local.get 4) (local.get 5) (local.get 6) (local.get 7)))

  (func (export "http_call") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (call $http_call (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)
      (local.get 5) (local.get 6) (local.get 7) (local.get 8) (local.get 9)))
  ;; Like the SDK: record the arguments at 3072.., switch to the calling stream (its id is the
  ;; first argument here), read the reply body (status at 3088, ptr/len at 3092/3096), and resume
  ;; the request.
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (i32.store (i32.const 3072) (local.get 1))
    (i32.store (i32.const 3076) (local.get 2))
    (i32.store (i32.const 3080) (local.get 3))
    (i32.store (i32.const 3084) (local.get 4))
    (drop (call $set_effective (local.get 0)))
    (i32.store (i32.const 3088)
      (call $get_buffer (i32.const 4) (i32.const 0) (i32.const -1) (i32.const 3092) (i32.const 3096)))
    (drop (call $continue (i32.const 0))))

  ;; What the SDK's panic hook does under panic=abort: log at Critical, then trap.
  (data (i32.const 4096) "panicked at src/lib.rs:7:5: boom")
  (func (export "panic")
    (drop (call $log (i32.const 5) (i32.const 4096) (i32.const 32)))
    unreachable)
  (func (export "spin") (loop $forever (br $forever)))
)
