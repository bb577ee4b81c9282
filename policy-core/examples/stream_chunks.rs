//! Feeds one streamed answer's events to the stream readers in a loop, to count the
//! instructions each event costs with callgrind (BENCHMARKS.md §2, "Issue 14: a streamed call's
//! cost per chunk"): run it with 0 and with 1,000 rounds and divide the difference by 1,000.
//!
//! ```sh
//! cargo build --release -p policy-core --example stream_chunks
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/stream_chunks chat 1000
//! ```
//!
//! Cases: `chat` (an OpenAI chat content chunk, scanned and passed through the remover of the
//! usage tollgate asked for), `chat-null` (the same chunk with OpenAI's `"usage":null`, which
//! the remover cuts), `responses`, `anthropic`, `gemini` (SSE), `ollama` (NDJSON): one content
//! event each, scanned.

use std::hint::black_box;
use std::process::ExitCode;

use policy_core::llm::{AddedUsageRemover, Framing, SseLimits, SseScanner};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(case), Some(rounds)) = (
        args.first(),
        args.get(1).and_then(|n| n.parse::<u32>().ok()),
    ) else {
        eprintln!("usage: stream_chunks chat|chat-null|responses|anthropic|gemini|ollama ROUNDS");
        return ExitCode::FAILURE;
    };
    let (event, framing, remove): (&[u8], Framing, bool) = match case.as_str() {
        "chat" => (
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w3 \"}}]}\n\n",
            Framing::Sse,
            true,
        ),
        "chat-null" => (
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w3 \"}}],\"usage\":null}\n\n",
            Framing::Sse,
            true,
        ),
        "responses" => (
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"w3 \"}\n\n",
            Framing::Sse,
            false,
        ),
        "anthropic" => (
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"w3 \"}}\n\n",
            Framing::Sse,
            false,
        ),
        "gemini" => (
            b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"w3 \"}],\"role\":\"model\"},\"index\":0}]}\r\n\r\n",
            Framing::Sse,
            false,
        ),
        "ollama" => (
            b"{\"model\":\"llama3.2\",\"created_at\":\"2024-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"w3 \"},\"done\":false}\n",
            Framing::Ndjson,
            false,
        ),
        other => {
            eprintln!("unknown case {other}");
            return ExitCode::FAILURE;
        }
    };
    let mut scanner = SseScanner::with_framing(SseLimits::default(), framing);
    let mut remover = remove.then(|| AddedUsageRemover::new(1 << 20));
    let mut out = Vec::with_capacity(event.len());
    for _ in 0..rounds {
        scanner.feed(black_box(event));
        if let Some(remover) = remover.as_mut() {
            out.clear();
            remover.push(event, &mut out);
            black_box(&out);
        }
    }
    println!(
        "{} events, {} estimated output tokens",
        scanner.events(),
        scanner.estimated_output_tokens()
    );
    ExitCode::SUCCESS
}
