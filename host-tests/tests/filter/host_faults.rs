//! No status a host call can return traps the filter: every import tollgate uses is made to fail
//! with statuses the ABI knows and one it does not, while real traffic flows (plain, gRPC and LLM
//! requests, allowed and refused, JSON and streamed answers, the metrics tick); then the worker
//! must still serve. And the documented fallbacks, one by one.

use std::time::Duration;

use host_tests::{FailFor, Harness, HostError, Request, Response};

use crate::support::{tollgate, tollgate_with};

const POLICY: &str = r#"{"tiers":[
    {"name":"llm","match":{"headers":[{"name":"x-llm-user","present":true}]},
     "identity":{"header":"x-llm-user"},
     "limits":[{"requests":1,"per":"minute"}],
     "tokens":[{"tokens":100000,"per":"hour"}]},
    {"name":"users","identity":{"header":"x-user-id"},
     "limits":[{"requests":1,"per":"minute"}]}]}"#;

/// NotFound, BadArgument, InternalFailure, and 99, which no ABI version defines.
const STATUSES: [u32; 4] = [1, 2, 10, 99];

fn llm_call(path: &str, user: &str, stream: bool) -> Request {
    let body = format!(
        r#"{{"model":"m","max_tokens":16,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let response = if stream {
        Response::ok()
            .header("content-type", "text/event-stream")
            .body_chunk("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n")
            .body_chunk("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n")
    } else {
        Response::ok()
            .header("content-type", "application/json")
            .body_chunk(r#"{"usage":{"prompt_tokens":3,"completion_tokens":5,"input_tokens":3,"output_tokens":5}}"#)
    };
    Request::new("POST", path)
        .header("x-llm-user", user)
        .header("x-request-id", "id-1")
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body_chunk(body)
        .respond_with(response)
}

/// A chat stream whose body cannot be rewritten within the length its headers announced: refused
/// with 400 at its body (the refusal that asks the host for the request's id, the headers being no
/// longer held there).
fn unfit_body_call(user: &str) -> Request {
    let body = r#"{"stream":true,"stream_options":{"a":1},"stream_options":{"b":2}}"#;
    Request::new("POST", "/v1/chat/completions")
        .header("x-llm-user", user)
        .header("x-request-id", "id-2")
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body_chunk(body)
}

/// Drives every path tollgate has, as `tag`'s users; returns the first host error.
fn traffic(h: &Harness, tag: &str) -> Result<(), HostError> {
    let user = format!("u-{tag}");
    for _ in 0..2 {
        h.request(0, &[("x-user-id", user.as_str()), ("x-request-id", "r")])?;
        h.request(
            0,
            &[
                ("x-user-id", format!("g-{tag}").as_str()),
                ("content-type", "application/grpc"),
            ],
        )?;
        h.send(
            0,
            &llm_call("/v1/chat/completions", &format!("o-{tag}"), false),
        )?;
        h.send(
            0,
            &llm_call("/v1/chat/completions", &format!("s-{tag}"), true),
        )?;
        h.send(0, &llm_call("/v1/messages", &format!("a-{tag}"), false))?;
        h.send(0, &unfit_body_call(&format!("b-{tag}")))?;
    }
    h.advance(Duration::from_secs(2)) // the tick: metrics flushed
}

fn is_trap(e: &HostError) -> bool {
    matches!(e, HostError::Trap { .. } | HostError::Runaway { .. })
}

#[test]
fn no_status_from_any_import_traps_the_filter() {
    let mut imports: Vec<String> = tollgate()
        .imports()
        .into_iter()
        .filter(|(module, _)| module == "env")
        .map(|(_, name)| name)
        .collect();
    imports.sort();
    assert!(imports.len() >= 15, "{imports:?}");
    for status in STATUSES {
        let h = tollgate_with(1, POLICY);
        for import in &imports {
            let tag = format!("{status}-{import}");
            h.shared()
                .faults()
                .fail(import, status, FailFor::Always)
                .unwrap();
            let result = traffic(&h, &tag);
            h.shared().faults().clear();
            if let Err(e) = &result {
                assert!(!is_trap(e), "{import} answering {status}: {e}");
            }
            // Healed, the same worker serves a new caller: nothing was left broken.
            let after = h
                .request(0, &[("x-user-id", format!("fresh-{tag}").as_str())])
                .unwrap_or_else(|e| panic!("after {import} answered {status}: {e}"));
            assert!(after.is_continue(), "after {import}={status}: {after:?}");
        }
    }
}

#[test]
fn the_faults_reach_the_filter() {
    // The sweep above is only worth something if the filter really calls what it fails.
    let h = tollgate_with(1, POLICY);
    for import in [
        "proxy_get_current_time_nanoseconds",
        "proxy_get_header_map_pairs",
        "proxy_get_header_map_value",
        "proxy_replace_header_map_value",
        "proxy_get_buffer_bytes",
        "proxy_send_local_response",
        "proxy_get_shared_data",
        "proxy_increment_metric",
    ] {
        h.shared()
            .faults()
            .fail(import, 99, FailFor::Always)
            .unwrap();
        if let Err(e) = traffic(&h, import) {
            assert!(!is_trap(&e), "{import}: {e}");
        }
        assert!(
            h.shared().faults().injected(import) > 0,
            "{import} never called"
        );
        h.shared().faults().clear();
    }
    assert!(matches!(
        h.shared()
            .faults()
            .fail("proxy_no_such_call", 1, FailFor::Always),
        Err(HostError::UnknownImport(_))
    ));
}

#[test]
fn configuration_under_failing_imports_is_refused_or_done_never_a_trap() {
    for import in [
        "proxy_get_buffer_bytes",
        "proxy_log",
        "proxy_set_tick_period_milliseconds",
        "proxy_define_metric",
        "proxy_get_shared_data",
        "proxy_set_shared_data",
    ] {
        for status in STATUSES {
            let builder = Harness::new(tollgate());
            let shared = host_tests::Shared::new();
            shared
                .faults()
                .fail(import, status, FailFor::Always)
                .unwrap();
            match builder.shared(shared).configure(POLICY) {
                Ok(_) | Err(HostError::ConfigureRejected { .. }) => {}
                Err(e) => panic!("{import} answering {status} at configure: {e}"),
            }
        }
    }
    // The policy itself unreadable: refused with the reason, as an invalid policy is.
    let shared = host_tests::Shared::new();
    shared
        .faults()
        .fail("proxy_get_buffer_bytes", 10, FailFor::Always)
        .unwrap();
    match Harness::new(tollgate()).shared(shared).configure(POLICY) {
        Err(HostError::ConfigureRejected { reason, .. }) => {
            let reason = reason.unwrap_or_default();
            assert!(
                reason.contains("cannot read the plugin configuration"),
                "{reason}"
            );
            assert!(reason.contains("status 10"), "{reason}");
        }
        other => panic!("expected a refused configuration, got {other:?}"),
    }
}

#[test]
fn a_failed_clock_stands_time_still_so_nobody_gets_more_than_their_limit() {
    let h = tollgate_with(1, POLICY);
    let alice = [("x-user-id", "alice")];
    assert!(h.request(0, &alice).unwrap().is_continue());
    h.shared()
        .faults()
        .fail("proxy_get_current_time_nanoseconds", 99, FailFor::Always)
        .unwrap();
    // Two minutes pass, but the worker cannot see them: alice's bucket does not refill.
    h.advance(Duration::from_secs(120)).unwrap();
    let refused = h.request(0, &alice).unwrap();
    assert_eq!(refused.status(), 429, "{refused:?}");
    let warned = h.logs(0).unwrap().into_iter().any(|l| {
        l.message
            .contains("clock unavailable, deciding at the last good reading")
    });
    assert!(warned, "no warning logged");
    // The clock back: the two minutes count.
    h.shared().faults().clear();
    assert!(h.request(0, &alice).unwrap().is_continue());
}

#[test]
fn unreadable_request_headers_leave_the_request_unlimited() {
    let h = tollgate_with(1, POLICY);
    h.shared()
        .faults()
        .fail("proxy_get_header_map_pairs", 10, FailFor::Always)
        .unwrap();
    // Without headers no tier finds an identity: the request is not limited, every time.
    for _ in 0..3 {
        let out = h.request(0, &[("x-user-id", "bob")]).unwrap();
        assert!(out.is_continue(), "{out:?}");
    }
}

#[test]
fn an_unsendable_local_reply_is_logged_and_the_stream_stays_stopped() {
    let h = tollgate_with(1, POLICY);
    assert!(h
        .request(0, &[("x-user-id", "carol")])
        .unwrap()
        .is_continue());
    h.shared()
        .faults()
        .fail("proxy_send_local_response", 99, FailFor::Next(1))
        .unwrap();
    // Paused with no answer: the harness says so (Envoy would time the stream out).
    match h.request(0, &[("x-user-id", "carol")]) {
        Err(HostError::StreamState { reason, .. }) => {
            assert!(reason.contains("paused without answering"), "{reason}");
        }
        other => panic!("expected a stopped stream, got {other:?}"),
    }
    let logged = h.logs(0).unwrap().into_iter().any(|l| {
        l.message
            .contains("local reply 429 not sent: proxy_send_local_response returned status 99")
    });
    assert!(logged, "no warning logged");
    // The next refusal goes out as usual.
    assert_eq!(
        h.request(0, &[("x-user-id", "carol")]).unwrap().status(),
        429
    );
}
