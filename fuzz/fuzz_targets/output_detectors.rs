//! Generated text, as a model or a provider may write it: every finding lies on
//! character boundaries, and the streaming guard sends the same text (findings masked)
//! however the pieces fall. Never a panic or a hang.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use warden::policy::output::{Detectors, OutputGuard};
use warden::policy::Policy;

/// Compiled once: compiling the patterns for every input would leave little time for
/// the inputs themselves.
static DETECTORS: LazyLock<Detectors> =
    LazyLock::new(|| Detectors::new().expect("the built-in patterns compile"));
/// The empty policy redacts every detector (output safety fails closed).
static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::from_yaml("", Path::new("fuzz/policy.yaml")).expect("the empty policy compiles")
});

fuzz_target!(|input: (u8, &str)| {
    let (piece, text) = input;
    for span in DETECTORS.find(text) {
        assert!(span.start <= span.end && span.end <= text.len());
        assert!(text.is_char_boundary(span.start) && text.is_char_boundary(span.end));
    }
    let guard = || OutputGuard::new(POLICY.output().scanner("a"));
    let (whole, _) = guard().screen_in_pieces(text, usize::MAX);
    let (pieces, _) = guard().screen_in_pieces(text, usize::from(piece % 16) + 1);
    assert_eq!(whole, pieces);
});
