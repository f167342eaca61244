//! A request body, as any client may send it, read by every model endpoint's parser
//! (chat completions; the Responses API and text completions, which rewrite their
//! bodies as chat requests; embeddings): parsed and validated into a request, or
//! refused with an error; never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden::api::openai::request::{parse_body, Limits};
use warden::api::openai::{completions, embeddings, responses};

const LIMITS: Limits = Limits {
    max_tools: 128,
    max_tool_schema_bytes: 64 * 1024,
};

fuzz_target!(|body: &[u8]| {
    let _ = parse_body(body, &LIMITS, "fuzz-agent");
    let _ = responses::parse_body(body, &LIMITS, "fuzz-agent");
    let _ = completions::parse_body(body, &LIMITS, "fuzz-agent");
    let _ = embeddings::parse_body(body, &LIMITS, "fuzz-agent");
});
