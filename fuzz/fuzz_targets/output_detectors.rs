//! Generated text, as a model or a provider may write it: every finding lies on
//! character boundaries, and the streaming guard sends the same text (findings masked)
//! however the pieces fall. Never a panic or a hang.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use warden::policy::output::{Detectors, OutputGuard};
use warden::policy::Policy;

fuzz_target!(|input: (u8, &str)| {
    let (piece, text) = input;
    let detectors = Detectors::new().expect("the built-in patterns compile");
    for span in detectors.find(text) {
        assert!(span.start <= span.end && span.end <= text.len());
        assert!(text.is_char_boundary(span.start) && text.is_char_boundary(span.end));
    }
    // The empty policy redacts every detector (output safety fails closed).
    let policy = Policy::from_yaml("", Path::new("fuzz/policy.yaml")).expect("empty policy");
    let guard = || OutputGuard::new(policy.output().scanner("a"));
    let (whole, _) = guard().screen_in_pieces(text, usize::MAX);
    let (pieces, _) = guard().screen_in_pieces(text, usize::from(piece % 16) + 1);
    assert_eq!(whole, pieces);
});
