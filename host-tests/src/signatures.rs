//! The signature of every import this host implements, in one table: [`crate::imports`] links a
//! host function for each entry and [`IMPLEMENTED_IMPORTS`] lists their names, so the two cannot
//! drift. The table has a module of its own so that what needs only the names (fault injection,
//! [`crate::Faults`]) does not depend on the host functions, which depend on the instance state,
//! which holds the faults.

/// Calls macro `$callback` with the table: one `name(arg: type, ...);` entry per import.
macro_rules! for_each_import {
    ($callback:ident) => {
        $callback! {
            proxy_log(level: i32, ptr: i32, len: i32);
            proxy_get_log_level(ret: i32);
            proxy_get_current_time_nanoseconds(ret: i32);
            proxy_set_tick_period_milliseconds(period: i32);
            proxy_get_buffer_bytes(buffer: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32);
            proxy_set_buffer_bytes(buffer: i32, start: i32, size: i32, ptr: i32, len: i32);
            proxy_get_buffer_status(buffer: i32, ret_size: i32, ret_flags: i32);
            proxy_get_header_map_pairs(map: i32, ret_ptr: i32, ret_len: i32);
            proxy_set_header_map_pairs(map: i32, ptr: i32, len: i32);
            proxy_get_header_map_size(map: i32, ret_size: i32);
            proxy_get_header_map_value(map: i32, key_ptr: i32, key_len: i32, ret_ptr: i32, ret_len: i32);
            proxy_replace_header_map_value(map: i32, key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32);
            proxy_remove_header_map_value(map: i32, key_ptr: i32, key_len: i32);
            proxy_add_header_map_value(map: i32, key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32);
            proxy_get_property(path_ptr: i32, path_len: i32, ret_ptr: i32, ret_len: i32);
            proxy_set_property(path_ptr: i32, path_len: i32, val_ptr: i32, val_len: i32);
            proxy_get_shared_data(key_ptr: i32, key_len: i32, ret_ptr: i32, ret_len: i32, ret_cas: i32);
            proxy_set_shared_data(key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32, cas: i32);
            proxy_register_shared_queue(name_ptr: i32, name_len: i32, ret_id: i32);
            proxy_resolve_shared_queue(vm_ptr: i32, vm_len: i32, name_ptr: i32, name_len: i32, ret_id: i32);
            proxy_enqueue_shared_queue(id: i32, ptr: i32, len: i32);
            proxy_dequeue_shared_queue(id: i32, ret_ptr: i32, ret_len: i32);
            proxy_continue_stream(stream: i32);
            proxy_close_stream(stream: i32);
            proxy_send_local_response(
                status: i32, details_ptr: i32, details_len: i32, body_ptr: i32, body_len: i32,
                headers_ptr: i32, headers_len: i32, grpc_status: i32
            );
            proxy_http_call(
                upstream_ptr: i32, upstream_len: i32, headers_ptr: i32, headers_len: i32,
                body_ptr: i32, body_len: i32, trailers_ptr: i32, trailers_len: i32,
                timeout_ms: i32, ret_token: i32
            );
            proxy_grpc_call(
                upstream_ptr: i32, upstream_len: i32, service_ptr: i32, service_len: i32,
                method_ptr: i32, method_len: i32, metadata_ptr: i32, metadata_len: i32,
                message_ptr: i32, message_len: i32, timeout_ms: i32, ret_token: i32
            );
            proxy_grpc_stream(
                upstream_ptr: i32, upstream_len: i32, service_ptr: i32, service_len: i32,
                method_ptr: i32, method_len: i32, metadata_ptr: i32, metadata_len: i32, ret_token: i32
            );
            proxy_grpc_send(token: i32, ptr: i32, len: i32, end_stream: i32);
            proxy_grpc_cancel(token: i32);
            proxy_grpc_close(token: i32);
            proxy_get_status(ret_code: i32, ret_ptr: i32, ret_len: i32);
            proxy_set_effective_context(context: i32);
            proxy_done();
            proxy_call_foreign_function(
                name_ptr: i32, name_len: i32, args_ptr: i32, args_len: i32, ret_ptr: i32, ret_len: i32
            );
            proxy_define_metric(kind: i32, name_ptr: i32, name_len: i32, ret_id: i32);
            proxy_get_metric(id: i32, ret: i32);
            proxy_record_metric(id: i32, value: i64);
            proxy_increment_metric(id: i32, delta: i64);
        }
    };
}
pub(crate) use for_each_import;

/// The names of the table's entries, as a slice expression.
macro_rules! names {
    ($($name:ident($($arg:ident: $ty:ty),*);)+) => {
        &[$(stringify!($name)),+]
    };
}

/// Every `env` import this host implements: the 37 functions of proxy-wasm ABI 0.2.1 that the
/// SDKs use, plus `proxy_get_buffer_status` and `proxy_get_header_map_size`.
pub const IMPLEMENTED_IMPORTS: &[&str] = for_each_import!(names);
