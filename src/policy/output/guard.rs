//! Screening a response as it streams. Text is held back just long enough that no
//! finding can still grow across what is released: the last `WINDOW` visible
//! characters (more than any finding that contains spaces has), the trailing run of
//! characters that read as visible ASCII (keys, tokens and addresses are made of
//! them), and any finding that reaches the end of the text so far (an unfinished
//! private key). A redacted finding is masked in place, its tokens' log-probabilities
//! too; a quarantined one stops all further text.

use std::collections::{BTreeMap, VecDeque};

use super::folded::reads_as_visible_ascii;
use super::{mask, Finding, OutputAction, Scanner};
use crate::chat::TokenLogprob;
use crate::policy::names::is_invisible;
use crate::policy::output::Detector;

/// Visible characters always held back: more than the longest finding that may contain
/// spaces has (an IBAN written in groups, 42). Counted in characters, not bytes, as the
/// detectors read them: a finding in fullwidth digits is three times as many bytes, and
/// invisible characters inside one do not count.
const WINDOW: usize = 64;
/// Visible characters of released text scanned again as context, so that `Bearer `
/// already sent still marks the token that follows it.
const CONTEXT: usize = 128;

/// Text cleared for the client, with the log-probabilities of its tokens.
#[derive(Debug, Default, PartialEq)]
pub struct Release {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
}

/// How a screened response ended.
#[derive(Debug, Default)]
pub struct GuardEnd {
    pub release: Release,
    /// The whole generated text, when a finding quarantined it.
    pub quarantined: Option<String>,
    /// Findings the policy acted on, counted by detector and action.
    pub findings: BTreeMap<(Detector, OutputAction), u32>,
}

pub struct OutputGuard {
    scanner: Scanner,
    raw: String,
    released: usize,
    /// Log-probabilities with the byte range of the text they arrived with.
    pending: VecDeque<(usize, usize, Vec<TokenLogprob>)>,
    masked: Vec<(usize, usize)>,
    quarantined: bool,
}

impl OutputGuard {
    pub fn new(scanner: Scanner) -> Self {
        Self {
            scanner,
            raw: String::new(),
            released: 0,
            pending: VecDeque::new(),
            masked: Vec::new(),
            quarantined: false,
        }
    }

    /// Takes the next piece of generated text; returns what may be sent now.
    pub fn push(&mut self, text: &str, logprobs: Vec<TokenLogprob>) -> Release {
        let start = self.raw.len();
        self.raw.push_str(text);
        self.pending.push_back((start, self.raw.len(), logprobs));
        if !self.scanner.active() {
            return self.release(self.raw.len(), &[]);
        }
        if self.quarantined {
            return Release::default();
        }
        let findings = self.findings();
        if findings
            .iter()
            .any(|f| f.action == OutputAction::Quarantine)
        {
            self.quarantined = true;
            return Release::default();
        }
        let mut cut = visible_chars_before(&self.raw, self.raw.len(), WINDOW);
        // The trailing run of what keys, tokens and addresses are made of may still grow
        // into one. Text in other scripts ends a run, so it streams like any other.
        let trailing_run = self
            .raw
            .char_indices()
            .rev()
            .find(|&(_, c)| !is_invisible(c) && !reads_as_visible_ascii(c))
            .map_or(0, |(at, c)| at + c.len_utf8());
        cut = cut.min(trailing_run);
        for finding in &findings {
            if finding.end == self.raw.len() || (finding.start < cut && cut < finding.end) {
                cut = cut.min(finding.start);
            }
        }
        if cut <= self.released {
            return Release::default();
        }
        self.release(cut, &findings)
    }

    /// Ends the response: releases the rest, or withholds it when quarantined.
    pub fn finish(mut self) -> GuardEnd {
        let mut end = GuardEnd::default();
        if self.scanner.active() && !self.quarantined {
            let findings = self.findings();
            self.quarantined = findings
                .iter()
                .any(|f| f.action == OutputAction::Quarantine);
            if !self.quarantined {
                end.release = self.release(self.raw.len(), &findings);
            }
        }
        if !self.scanner.active() {
            end.release = self.release(self.raw.len(), &[]);
        }
        for finding in self.scanner.scan(&self.raw) {
            *end.findings
                .entry((finding.detector, finding.action))
                .or_default() += 1;
        }
        if self.quarantined {
            end.quarantined = Some(self.raw);
        }
        end
    }

    /// Screens a whole text fed `piece_chars` characters at a time, as a stream would
    /// deliver it: what the client is sent, and how it ended. However the pieces fall,
    /// what is sent must be the same (the tests and the fuzz target hold it to that).
    pub fn screen_in_pieces(mut self, text: &str, piece_chars: usize) -> (String, GuardEnd) {
        let chars: Vec<char> = text.chars().collect();
        let mut sent = String::new();
        for piece in chars.chunks(piece_chars.max(1)) {
            let piece: String = piece.iter().collect();
            sent.push_str(&self.push(&piece, Vec::new()).text);
        }
        let end = self.finish();
        sent.push_str(&end.release.text);
        (sent, end)
    }

    /// Findings that reach the unreleased text (scanned with some context before it).
    fn findings(&self) -> Vec<Finding> {
        let from = visible_chars_before(&self.raw, self.released, CONTEXT);
        self.scanner
            .scan(&self.raw[from..])
            .into_iter()
            .map(|f| Finding {
                start: f.start + from,
                end: f.end + from,
                ..f
            })
            .filter(|f| f.end > self.released)
            .collect()
    }

    /// Sends the text up to `cut`, findings masked (only their unsent part, for one
    /// whose start went out as harmless context).
    fn release(&mut self, cut: usize, findings: &[Finding]) -> Release {
        let mut text = String::new();
        let mut at = self.released;
        for finding in findings.iter().filter(|f| f.start < cut) {
            let start = finding.start.max(at);
            text.push_str(&self.raw[at..start]);
            text.push_str(&mask(finding.detector));
            self.masked.push((start, finding.end));
            at = finding.end.min(cut).max(start);
            if finding.end > cut {
                break;
            }
        }
        if at < cut {
            text.push_str(&self.raw[at..cut]);
        }
        self.released = cut;
        let mut logprobs = Vec::new();
        while let Some((_, end, _)) = self.pending.front() {
            if *end > cut {
                break;
            }
            let (start, end, tokens) = match self.pending.pop_front() {
                Some(entry) => entry,
                None => break,
            };
            let hidden = self
                .masked
                .iter()
                .any(|&(m_start, m_end)| m_start < end.max(start + 1) && start < m_end);
            logprobs.extend(
                tokens
                    .into_iter()
                    .map(|token| if hidden { masked(token) } else { token }),
            );
        }
        Release { text, logprobs }
    }
}

fn masked(token: TokenLogprob) -> TokenLogprob {
    TokenLogprob {
        token: "[REDACTED]".into(),
        logprob: token.logprob,
        bytes: Vec::new(),
        top_logprobs: Vec::new(),
    }
}

/// Where the `count` visible characters before `end` begin (the text's start if it has
/// fewer).
fn visible_chars_before(text: &str, end: usize, count: usize) -> usize {
    // Every ASCII byte is one visible character: the usual case needs no walk.
    let from = end.saturating_sub(count);
    if text.as_bytes()[from..end].is_ascii() {
        return from;
    }
    let mut seen = 0;
    for (at, c) in text[..end].char_indices().rev() {
        if !is_invisible(c) {
            seen += 1;
            if seen == count {
                return at;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::output::{Actions, Detectors};
    use std::sync::Arc;

    fn guard(actions: &[(Detector, OutputAction)]) -> OutputGuard {
        let mut all = Actions::default();
        for (detector, action) in actions {
            all[detector.index()] = *action;
        }
        OutputGuard::new(Scanner {
            detectors: Arc::new(Detectors::new().unwrap()),
            actions: all,
        })
    }

    fn redact_all() -> OutputGuard {
        guard(&Detector::ALL.map(|d| (d, OutputAction::Redact)))
    }

    #[test]
    fn findings_split_across_pieces_are_never_sent() {
        let secrets = [
            "Reach me at jane.doe@example.com or +44 20 7946 0958 tomorrow.",
            "Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789.",
            "Use Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ please.",
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yBxUg\nMore lines here\n-----END EC PRIVATE KEY-----\nbye",
            "key=sk-proj-abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnop and more text after it",
        ];
        for text in secrets {
            let whole = {
                let (sent, _) = redact_all().screen_in_pieces(text, usize::MAX);
                sent
            };
            for size in [1, 2, 3, 5, 7, 16] {
                let (sent, end) = redact_all().screen_in_pieces(text, size);
                assert_eq!(sent, whole, "piece size {size}: {text:?}");
                assert!(end.quarantined.is_none());
            }
            assert!(whole.contains("[REDACTED:"), "{whole}");
            for leaked in [
                "jane.doe",
                "7946",
                "4111",
                "3704",
                "6789",
                "abcdefghijklmnop",
                "MHcCAQ",
            ] {
                assert!(!whole.contains(leaked), "{leaked} in {whole}");
            }
        }
    }

    #[test]
    fn findings_in_other_digits_are_held_back_and_masked_in_any_pieces() {
        let texts = [
            "Card: ４１１１ １１１１ １１１１ １１１１ is on file, thank you.",
            "IBAN ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００ for the refund please.",
            "Pay to DE０１ AAAA BBBB CCCC now, and then some more text after it.",
            "card 4\u{200b}\u{200b}\u{200b}\u{200b}111 1111 1111 1111 closes the note.",
        ];
        for text in texts {
            let (whole, _) = redact_all().screen_in_pieces(text, usize::MAX);
            for size in [1, 2, 3, 5, 7] {
                let (sent, _) = redact_all().screen_in_pieces(text, size);
                assert_eq!(sent, whole, "piece size {size}: {text:?}");
            }
            for leaked in ["１１１１", "３７０４", "1111"] {
                assert!(!whole.contains(leaked), "{leaked} in {whole}");
            }
        }
    }

    #[test]
    fn text_without_spaces_in_other_scripts_streams_too() {
        let mut guard = redact_all();
        let text = "東京は日本の首都です。".repeat(20);
        let sent = guard.push(&text, Vec::new()).text;
        assert!(text.chars().count() - sent.chars().count() <= WINDOW);
        let end = guard.finish();
        assert_eq!(format!("{sent}{}", end.release.text), text);
    }

    #[test]
    fn clean_text_flows_with_a_bounded_delay() {
        let mut guard = redact_all();
        let text = "The capital of France is Paris. ".repeat(10);
        let sent = guard.push(&text, Vec::new()).text;
        assert!(text.len() - sent.len() <= WINDOW, "{}", sent.len());
        let end = guard.finish();
        assert_eq!(format!("{sent}{}", end.release.text), text);
        assert!(end.findings.is_empty());
    }

    #[test]
    fn quarantine_withholds_the_rest_and_keeps_the_text_for_review() {
        let mut guard = guard(&[(Detector::PrivateKey, OutputAction::Quarantine)]);
        let head = "Here is some preamble text that is long enough to be released early on. ";
        let sent = guard.push(head, Vec::new()).text;
        assert!(!sent.is_empty());
        assert!(guard
            .push("-----BEGIN PRIVATE KEY-----\nMIIE", Vec::new())
            .text
            .is_empty());
        assert!(guard.push(" more", Vec::new()).text.is_empty());
        let end = guard.finish();
        assert!(end.release.text.is_empty());
        assert!(end.quarantined.unwrap().contains("MIIE"));
        assert_eq!(
            end.findings
                .get(&(Detector::PrivateKey, OutputAction::Quarantine)),
            Some(&1)
        );
    }

    #[test]
    fn logprobs_of_masked_text_are_masked() {
        let token = |text: &str| TokenLogprob {
            token: text.into(),
            logprob: -0.5,
            bytes: text.as_bytes().to_vec(),
            top_logprobs: Vec::new(),
        };
        let mut guard = redact_all();
        let mut logprobs = Vec::new();
        for piece in ["Mail ", "bob@", "example.com", " now."] {
            logprobs.extend(guard.push(piece, vec![token(piece)]).logprobs);
        }
        let end = guard.finish();
        logprobs.extend(end.release.logprobs);
        let tokens: Vec<&str> = logprobs.iter().map(|t| t.token.as_str()).collect();
        assert_eq!(tokens, ["Mail ", "[REDACTED]", "[REDACTED]", " now."]);
    }

    #[test]
    fn with_every_detector_allowed_text_passes_at_once() {
        let mut guard = guard(&[]);
        let release = guard.push("bob@example.com", Vec::new());
        assert_eq!(release.text, "bob@example.com");
        assert!(guard.finish().findings.is_empty());
    }
}
