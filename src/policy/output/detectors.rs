//! The detectors: e-mail addresses, phone numbers, payment cards (Luhn-checked),
//! national ids (US SSN, UK NINO), IBANs (mod-97-checked), API keys of well-known
//! providers, private keys, bearer tokens and JWTs. Patterns find candidates; checks
//! (checksums, digit counts, reserved ranges) keep false positives down. They read the
//! text folded to ASCII where it stands for ASCII (see `folded`), so other scripts'
//! digits and compatibility forms are found as their ASCII forms are; the patterns
//! themselves match ASCII only.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::folded::Folded;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    Phone,
    Card,
    NationalId,
    Iban,
    ApiKey,
    PrivateKey,
    BearerToken,
}

impl Detector {
    pub const ALL: [Detector; 8] = [
        Detector::Email,
        Detector::Phone,
        Detector::Card,
        Detector::NationalId,
        Detector::Iban,
        Detector::ApiKey,
        Detector::PrivateKey,
        Detector::BearerToken,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::Card => "card",
            Detector::NationalId => "national_id",
            Detector::Iban => "iban",
            Detector::ApiKey => "api_key",
            Detector::PrivateKey => "private_key",
            Detector::BearerToken => "bearer_token",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == text)
    }
}

/// Where a detector found something, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub detector: Detector,
}

pub struct Detectors {
    patterns: Vec<(Detector, Regex)>,
}

const EMAIL: &str = r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}";
const PHONE: &str = r"\+[0-9]{8,15}|(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{2,4}(?:[ .-][0-9]{2,4}){1,4}";
const CARD: &str = r"[0-9](?:[ -]?[0-9]){12,18}";
const SSN: &str = r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b";
const NINO: &str = r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b";
const IBAN: &str = r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?";
const API_KEY: &str = concat!(
    r"\b(?:sk-(?:proj-|ant-|live-)?[A-Za-z0-9_-]{20,}",
    r"|sk_(?:live|test)_[A-Za-z0-9]{20,}",
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}",
    r"|gh[pousr]_[A-Za-z0-9]{36,}",
    r"|github_pat_[A-Za-z0-9_]{22,}",
    r"|glpat-[A-Za-z0-9_-]{20,}",
    r"|xox[abposr]-[A-Za-z0-9-]{10,}",
    r"|AIza[0-9A-Za-z_-]{35})"
);
/// An unfinished block (the text ends inside it) counts as a key to its end.
const PRIVATE_KEY: &str = r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|[\s\S]*)";
const BEARER: &str = r"(?i:\bbearer)\s{1,16}[A-Za-z0-9._~+/=-]{16,}|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}";

impl Detectors {
    pub fn new() -> Result<Self, regex::Error> {
        let patterns = [
            (Detector::Email, EMAIL),
            (Detector::Phone, PHONE),
            (Detector::Card, CARD),
            (Detector::NationalId, SSN),
            (Detector::NationalId, NINO),
            (Detector::Iban, IBAN),
            (Detector::ApiKey, API_KEY),
            (Detector::PrivateKey, PRIVATE_KEY),
            (Detector::BearerToken, BEARER),
        ];
        let patterns = patterns
            .into_iter()
            .map(|(detector, pattern)| Regex::new(pattern).map(|regex| (detector, regex)))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Every finding in `text`, unordered, possibly overlapping; always whole
    /// characters of `text`.
    pub fn find(&self, text: &str) -> Vec<Span> {
        let folded = Folded::new(text);
        let read = folded.text.as_ref();
        let mut spans = Vec::new();
        for (detector, regex) in &self.patterns {
            for found in regex.find_iter(read) {
                let (start, end) = (found.start(), found.end());
                let end = match detector {
                    Detector::Phone => {
                        (isolated(read, start, end) && phone_digits(found.as_str())).then_some(end)
                    }
                    Detector::Card => {
                        (isolated(read, start, end) && card(found.as_str())).then_some(end)
                    }
                    Detector::NationalId => national_id(found.as_str()).then_some(end),
                    Detector::Iban => iban_end(read, start, end),
                    _ => Some(end),
                };
                if let Some(end) = end {
                    let (start, end) = folded.original_range(start, end);
                    spans.push(Span {
                        start,
                        end,
                        detector: *detector,
                    });
                }
            }
        }
        spans
    }
}

/// Digits not glued to more ASCII letters or digits (a phone inside a longer number or
/// an id is not a phone). Letters of other scripts do not glue: Japanese or Chinese
/// text writes a number straight after a word (`カード番号4111…`).
fn isolated(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '+')
        && !after.is_some_and(|c| c.is_ascii_alphanumeric())
}

fn digits(text: &str) -> Vec<u32> {
    text.chars().filter_map(|c| c.to_digit(10)).collect()
}

fn phone_digits(text: &str) -> bool {
    (10..=15).contains(&digits(text).len()) || (text.starts_with('+') && digits(text).len() >= 8)
}

/// 13 to 19 digits passing the Luhn check.
fn card(text: &str) -> bool {
    let digits = digits(text);
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|&d| d == digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2 == 1, d * 2) {
            (true, doubled) if doubled > 9 => doubled - 9,
            (true, doubled) => doubled,
            (false, _) => d,
        })
        .sum();
    sum % 10 == 0
}

/// A US SSN outside the never-issued ranges, or a UK NINO (the pattern checks it).
fn national_id(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    match parts.as_slice() {
        [area, group, serial] => {
            *area != "000"
                && *area != "666"
                && !area.starts_with('9')
                && *group != "00"
                && *serial != "0000"
        }
        _ => true,
    }
}

/// The end of the longest IBAN starting at `start` within the candidate (the pattern
/// may have swallowed a following word), checked with mod 97.
fn iban_end(text: &str, start: usize, end: usize) -> Option<usize> {
    let candidate = &text[start..end];
    let ends: Vec<usize> = candidate
        .char_indices()
        .filter(|(_, c)| c.is_ascii_alphanumeric())
        .map(|(i, c)| start + i + c.len_utf8())
        .collect();
    ends.into_iter()
        .rev()
        .find(|&stop| {
            let compact: String = text[start..stop].chars().filter(|c| *c != ' ').collect();
            (15..=34).contains(&compact.len()) && iban_checksum(&compact)
        })
        .filter(|&stop| !text[stop..].starts_with(|c: char| c.is_ascii_alphanumeric()))
}

fn iban_checksum(compact: &str) -> bool {
    let chars: Vec<char> = compact.chars().collect();
    if chars.len() < 4 {
        return false;
    }
    let rearranged = chars[4..].iter().chain(&chars[..4]);
    let mut remainder: u32 = 0;
    for c in rearranged {
        let value = match c.to_digit(36).filter(|_| c.is_ascii()) {
            Some(value) => value,
            None => return false,
        };
        for digit in value.to_string().chars().filter_map(|d| d.to_digit(10)) {
            remainder = (remainder * 10 + digit) % 97;
        }
    }
    remainder == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(Detector, &str)> {
        let mut spans = Detectors::new().unwrap().find(text);
        spans.sort_by_key(|s| (s.start, s.detector));
        spans
            .iter()
            .map(|s| (s.detector, &text[s.start..s.end]))
            .collect()
    }

    fn has(text: &str, detector: Detector, expected: &str) {
        let all = found(text);
        assert!(all.contains(&(detector, expected)), "{text:?}: {all:?}");
    }

    fn none_of(text: &str, detector: Detector) {
        let all = found(text);
        assert!(
            !all.iter().any(|(d, _)| *d == detector),
            "{text:?}: {all:?}"
        );
    }

    #[test]
    fn personal_data() {
        has(
            "write to jane.doe+x@mail.example.co.uk today",
            Detector::Email,
            "jane.doe+x@mail.example.co.uk",
        );
        has(
            "call +1 (415) 555-2671 now",
            Detector::Phone,
            "+1 (415) 555-2671",
        );
        has("call 020 7946 0958.", Detector::Phone, "020 7946 0958");
        has("E.164: +14155552671", Detector::Phone, "+14155552671");
        none_of("in 2024-01-15 at 10:30", Detector::Phone);
        none_of("version 1.2.3", Detector::Phone);
        has(
            "card 4111 1111 1111 1111.",
            Detector::Card,
            "4111 1111 1111 1111",
        );
        has(
            "card 5555-5555-5555-4444",
            Detector::Card,
            "5555-5555-5555-4444",
        );
        none_of("card 4111 1111 1111 1112", Detector::Card);
        none_of("order 0000000000000", Detector::Card);
        has("SSN 123-45-6789", Detector::NationalId, "123-45-6789");
        none_of("SSN 666-45-6789", Detector::NationalId);
        has("NINO AB 12 34 56 C", Detector::NationalId, "AB 12 34 56 C");
        has(
            "pay DE89 3704 0044 0532 0130 00 THEN",
            Detector::Iban,
            "DE89 3704 0044 0532 0130 00",
        );
        has(
            "GB82WEST12345698765432",
            Detector::Iban,
            "GB82WEST12345698765432",
        );
        none_of("GB82WEST12345698765433", Detector::Iban);
    }

    #[test]
    fn other_digits_and_forms_are_found_and_never_split_a_character() {
        // Once a panic: the IBAN check sliced bytes inside a fullwidth digit.
        let text = "Pay to DE０１ AAAA BBBB CCCC now.";
        for span in Detectors::new().unwrap().find(text) {
            assert!(text.is_char_boundary(span.start) && text.is_char_boundary(span.end));
        }
        has(
            "Card: ４１１１ １１１１ １１１１ １１１１ ok",
            Detector::Card,
            "４１１１ １１１１ １１１１ １１１１",
        );
        has(
            "call +１ (４１５) ５５５-２６７１ now",
            Detector::Phone,
            "+１ (４１５) ５５５-２６７１",
        );
        has(
            "card ٤١١١ ١١١١ ١١١١ ١١١١.",
            Detector::Card,
            "٤١١١ ١١١١ ١١١١ ١١١١",
        );
        has(
            "card 4111\u{200b}1111\u{2060}1111 1111 end",
            Detector::Card,
            "4111\u{200b}1111\u{2060}1111 1111",
        );
        has(
            "pay ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００ then",
            Detector::Iban,
            "ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００",
        );
        has(
            "カード番号４１１１１１１１１１１１１１１１です",
            Detector::Card,
            "４１１１１１１１１１１１１１１１",
        );
        has(
            "mail ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ now",
            Detector::Email,
            "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
        );
    }

    #[test]
    fn secrets() {
        has(
            "key sk-proj-abcdefghijklmnopqrstuvwxyz123456",
            Detector::ApiKey,
            "sk-proj-abcdefghijklmnopqrstuvwxyz123456",
        );
        has(
            "AKIAIOSFODNN7EXAMPLE",
            Detector::ApiKey,
            "AKIAIOSFODNN7EXAMPLE",
        );
        has(
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
            Detector::ApiKey,
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        );
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
        has(&format!("here: {key} done"), Detector::PrivateKey, key);
        has(
            "-----BEGIN PRIVATE KEY-----\nMIIE",
            Detector::PrivateKey,
            "-----BEGIN PRIVATE KEY-----\nMIIE",
        );
        has(
            "Authorization: Bearer abcdef0123456789XYZ",
            Detector::BearerToken,
            "Bearer abcdef0123456789XYZ",
        );
        let jwt =
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        has(&format!("token {jwt}"), Detector::BearerToken, jwt);
        none_of("bearer of good news", Detector::BearerToken);
    }
}
