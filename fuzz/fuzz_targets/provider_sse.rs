//! A provider's event stream, cut into chunks anywhere: decoded into the same events
//! however it is cut, or refused once an event outgrows its limit. Never a panic or a
//! hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden::backend::provider::sse::{SseDecoder, SseEvent};

fuzz_target!(|input: (u8, &[u8])| {
    let (cut, bytes) = input;
    let whole = decode(bytes, usize::MAX);
    let pieces = decode(bytes, usize::from(cut) + 1);
    assert_eq!(whole, pieces);
});

fn decode(bytes: &[u8], size: usize) -> Option<Vec<SseEvent>> {
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    for chunk in bytes.chunks(size) {
        events.extend(decoder.push(chunk).ok()?);
    }
    events.extend(decoder.finish());
    Some(events)
}
