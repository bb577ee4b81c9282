//! What a streamed response costs when it ends: the decision, apart from how it was observed.
//!
//! The filter watches a stream with an [`SseScanner`](super::SseScanner) and, when the stream
//! ends (normally or cut short), hands what it saw to [`stream_charge`]. Keeping the rule here
//! lets it be tested without a VM, and states the one property that closes a bypass: finishing
//! a stream never costs less than cutting it at any point. Otherwise a client (or an upstream
//! that never reports usage) would be better off letting a stream end than aborting it, and
//! the completed stream would escape what it visibly consumed.

use crate::budget::{OnIncomplete, OnMissingUsage};

use super::cost::Cost;
use super::usage::Usage;

/// What was seen of a streamed response, as it ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSeen {
    /// The response ended normally (its end of stream arrived); `false` when it was cut short
    /// (the client went away, the upstream reset).
    pub ended: bool,
    /// The stream reached its API's end marker (`[DONE]`, `message_stop`, a terminal
    /// `response.*` event).
    pub completed: bool,
    /// The usage the stream reported, if any.
    pub reported: Option<Usage>,
    /// What the client visibly received: the reported usage, its input replaced by the
    /// request's estimate where none was reported, its output raised to the streamed text / 4
    /// unless a completed stream reported it (see
    /// [`SseScanner::usage_or_estimate`](super::SseScanner::usage_or_estimate)).
    pub received: Usage,
    /// The call's estimate (what admission reserved).
    pub estimate: u64,
}

/// The tokens to charge for a stream that ended, given what was seen of it.
///
/// - Cut short: per `on_incomplete` — what was received, or the whole estimate.
/// - Ended at its end marker with usage: the usage it reported (what the provider bills).
/// - Ended otherwise (no usage, or no end marker): at least what was received *and* at least
///   what the same stream cut would pay; with no usage at all, also at least what
///   `on_missing_usage` asks for. So a stream that ends without usage pays the prompt estimate
///   plus its streamed text / 4 even under `on_missing_usage: "nothing"`.
pub fn stream_charge(
    seen: &StreamSeen,
    cost: &Cost,
    on_incomplete: OnIncomplete,
    on_missing_usage: OnMissingUsage,
) -> u64 {
    stream_charge_by(seen, |u| cost.tokens(u), on_incomplete, on_missing_usage)
}

/// [`stream_charge`] in any unit: `meter` says what a usage costs in it (tokens by `llm.count`,
/// money by a price), and `seen.estimate` is the estimate in the same unit. A spend budget is
/// so charged by exactly the rule a token budget is.
pub fn stream_charge_by(
    seen: &StreamSeen,
    meter: impl Fn(&Usage) -> u64,
    on_incomplete: OnIncomplete,
    on_missing_usage: OnMissingUsage,
) -> u64 {
    let received = meter(&seen.received);
    let cut = match on_incomplete {
        OnIncomplete::Received => received,
        OnIncomplete::Reservation => seen.estimate,
    };
    if !seen.ended {
        return cut;
    }
    match seen.reported {
        Some(usage) if seen.completed => meter(&usage),
        Some(_) => received.max(cut),
        None => {
            let missing = match on_missing_usage {
                OnMissingUsage::Reservation => seen.estimate,
                OnMissingUsage::Nothing => 0,
            };
            received.max(cut).max(missing)
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::vec::Vec;

    use super::*;
    use crate::llm::sse::{SseLimits, SseScanner};

    const RULES: [(OnIncomplete, OnMissingUsage); 4] = [
        (OnIncomplete::Received, OnMissingUsage::Reservation),
        (OnIncomplete::Received, OnMissingUsage::Nothing),
        (OnIncomplete::Reservation, OnMissingUsage::Reservation),
        (OnIncomplete::Reservation, OnMissingUsage::Nothing),
    ];

    fn observe(
        scanner: &SseScanner,
        ended: bool,
        estimated_input: u64,
        estimate: u64,
    ) -> StreamSeen {
        StreamSeen {
            ended,
            completed: scanner.completed(),
            reported: scanner.usage(),
            received: scanner.usage_or_estimate(estimated_input),
            estimate,
        }
    }

    /// A chat stream of `deltas` deltas of 400 bytes of text each (100 tokens), no usage.
    fn chat_without_usage(deltas: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..deltas {
            out.extend_from_slice(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"");
            out.extend_from_slice(&[b'a'; 400]);
            out.extend_from_slice(b"\"}}]}\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }

    #[test]
    fn a_completed_stream_without_usage_pays_what_it_visibly_consumed() {
        let stream = chat_without_usage(50); // 5,000 tokens of text
        let mut s = SseScanner::new(SseLimits::default());
        s.feed(&stream);
        s.finish();
        assert!(s.completed() && s.usage().is_none());
        // Prompt estimate 40, reservation 40 + 256: far less than what streamed.
        let seen = observe(&s, true, 40, 296);
        for (on_incomplete, on_missing) in RULES {
            let charge = stream_charge(&seen, &Cost::TOTAL, on_incomplete, on_missing);
            assert_eq!(charge, 5_040, "{on_incomplete:?} {on_missing:?}");
        }
        // A short stream still pays at least the estimate when the rules ask for it.
        let short = chat_without_usage(1);
        let mut s = SseScanner::default();
        s.feed(&short);
        s.finish();
        let seen = observe(&s, true, 40, 296);
        let charge = |i, m| stream_charge(&seen, &Cost::TOTAL, i, m);
        assert_eq!(
            charge(OnIncomplete::Received, OnMissingUsage::Reservation),
            296
        );
        assert_eq!(charge(OnIncomplete::Received, OnMissingUsage::Nothing), 140);
        assert_eq!(
            charge(OnIncomplete::Reservation, OnMissingUsage::Nothing),
            296,
            "never less than the same stream cut"
        );
    }

    #[test]
    fn a_completed_stream_with_usage_pays_its_usage() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"abcdabcd\"}}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":90}}\n\n\
            data: [DONE]\n\n";
        let mut s = SseScanner::default();
        s.feed(stream);
        s.finish();
        for (i, m) in RULES {
            assert_eq!(
                stream_charge(&observe(&s, true, 500, 900), &Cost::TOTAL, i, m),
                97
            );
        }
        // Ended without its end marker: at least what was received, and what a cut pays.
        let mut s = SseScanner::default();
        s.feed(&stream[..stream.len() - b"data: [DONE]\n\n".len()]);
        s.finish();
        let seen = observe(&s, true, 500, 900);
        assert_eq!(
            stream_charge(
                &seen,
                &Cost::TOTAL,
                OnIncomplete::Received,
                OnMissingUsage::Nothing
            ),
            97
        );
        assert_eq!(
            stream_charge(
                &seen,
                &Cost::TOTAL,
                OnIncomplete::Reservation,
                OnMissingUsage::Nothing
            ),
            900
        );
    }

    /// The property the rule exists for: for every prefix of a stream, under every setting,
    /// the prefix cut short costs no more than the whole stream ending normally.
    #[test]
    fn finishing_never_costs_less_than_cutting() {
        let with_usage: &[u8] =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"abcdabcdabcd\"}}]}\n\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"abcdabcdabcd\"}}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":6}}\n\n\
            data: [DONE]\n\n";
        let anthropic: &[u8] = b"event: message_start\n\
            data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n\
            data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hello there, world\"}}\n\n\
            data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":5}}\n\n\
            data: {\"type\":\"message_stop\"}\n\n";
        let without = chat_without_usage(3);
        for stream in [with_usage, anthropic, &without] {
            let mut whole = SseScanner::default();
            whole.feed(stream);
            whole.finish();
            for (i, m) in RULES {
                // A stream that reports its usage is charged that usage, which a prefix cut
                // under `on_incomplete: "reservation"` may exceed (it pays the estimate): the
                // property is about streams whose usage never comes, and about what was
                // received.
                if whole.usage().is_some() && i == OnIncomplete::Reservation {
                    continue;
                }
                let ended = stream_charge(&observe(&whole, true, 3, 300), &Cost::TOTAL, i, m);
                for cut in 0..=stream.len() {
                    let mut part = SseScanner::default();
                    part.feed(&stream[..cut]);
                    part.finish();
                    let cut_charge =
                        stream_charge(&observe(&part, false, 3, 300), &Cost::TOTAL, i, m);
                    assert!(
                        cut_charge <= ended,
                        "cut at {cut}: {cut_charge} > {ended} ({i:?}, {m:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn a_cut_stream_pays_per_on_incomplete() {
        let stream = chat_without_usage(2);
        let mut s = SseScanner::default();
        s.feed(&stream[..500]);
        s.finish();
        let seen = observe(&s, false, 10, 1000);
        assert_eq!(
            stream_charge(
                &seen,
                &Cost::TOTAL,
                OnIncomplete::Received,
                OnMissingUsage::Reservation
            ),
            110
        );
        assert_eq!(
            stream_charge(
                &seen,
                &Cost::TOTAL,
                OnIncomplete::Reservation,
                OnMissingUsage::Nothing
            ),
            1000
        );
    }
}
