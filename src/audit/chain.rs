//! The hash chain: how a record line is sealed with its own hash, and how a run of lines
//! is checked to follow one another.
//!
//! A line is a JSON object whose last field is `"hash"`: the hex SHA-256 of the line's
//! bytes as they were before that field was added (the same object closed with `}`).
//! Hashing bytes, not a re-serialisation, means a checker needs no canonical JSON and any
//! edit, even one that leaves the JSON equivalent, shows. Each record's `prev` is the
//! `hash` of the record before it and its `seq` is one more than that record's, so a
//! deletion, insertion or reordering breaks the chain at the first record after it.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_FIELD: &str = ",\"hash\":\"";
const HASH_HEX_LEN: usize = 64;
const SEALED_SUFFIX_LEN: usize = HASH_FIELD.len() + HASH_HEX_LEN + "\"}".len();

/// Hex SHA-256 of `bytes`: the one digest warden writes anywhere (records, keys, call
/// and policy hashes).
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Seals `unsealed`, a record's JSON object without its hash: returns the line to write
/// and the record's hash.
pub fn seal(mut unsealed: String) -> (String, String) {
    let hash = digest(unsealed.as_bytes());
    unsealed.pop();
    unsealed.push_str(HASH_FIELD);
    unsealed.push_str(&hash);
    unsealed.push_str("\"}");
    (unsealed, hash)
}

/// The fields every record starts with.
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    pub seq: u64,
    pub prev: String,
    pub time: DateTime<Utc>,
    pub kind: String,
}

/// A record whose own hash checks out.
#[derive(Debug, Clone)]
pub struct Opened {
    pub header: Header,
    pub hash: String,
}

/// Why a line is not the record that should come next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("not a sealed record: {0}")]
    Unreadable(String),
    #[error("edited: it says its hash is {stored}, its content hashes to {computed}")]
    Edited { stored: String, computed: String },
    #[error("out of sequence: seq {found} where {expected} should come (a record was deleted, inserted or moved)")]
    OutOfSequence { expected: u64, found: u64 },
    #[error("chain broken: `prev` is {found} but the record before it hashes to {expected}")]
    ChainBroken { expected: String, found: String },
}

/// Checks a line's own hash and reads its header.
pub fn open(line: &[u8]) -> Result<Opened, Fault> {
    let text = std::str::from_utf8(line).map_err(|_| Fault::Unreadable("not UTF-8 text".into()))?;
    let split = text
        .len()
        .checked_sub(SEALED_SUFFIX_LEN)
        .filter(|&at| {
            text.is_char_boundary(at) && text[at..].starts_with(HASH_FIELD) && text.ends_with("\"}")
        })
        .ok_or_else(|| Fault::Unreadable("it does not end with a `hash` field".into()))?;
    let stored = &text[split + HASH_FIELD.len()..text.len() - 2];
    let mut unsealed = String::with_capacity(split + 1);
    unsealed.push_str(&text[..split]);
    unsealed.push('}');
    let computed = digest(unsealed.as_bytes());
    if stored != computed {
        return Err(Fault::Edited {
            stored: stored.to_string(),
            computed,
        });
    }
    let header: Header =
        serde_json::from_str(&unsealed).map_err(|e| Fault::Unreadable(e.to_string()))?;
    Ok(Opened {
        header,
        hash: computed,
    })
}

/// A record's place in the chain: what the next record must follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub seq: u64,
    pub hash: String,
}

impl Link {
    /// The place before the first record.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.into(),
        }
    }
}

/// Walks a chain record by record.
#[derive(Debug, Clone)]
pub struct Cursor {
    last: Option<Link>,
}

impl Cursor {
    /// A chain that must start at the first record.
    pub fn genesis() -> Self {
        Self::after(Link::genesis())
    }

    pub fn after(link: Link) -> Self {
        Self { last: Some(link) }
    }

    /// A chain that may start anywhere (checking one segment on its own).
    pub fn unanchored() -> Self {
        Self { last: None }
    }

    /// Checks that `line` is the record that comes next, and moves past it.
    pub fn accept(&mut self, line: &[u8]) -> Result<Opened, Fault> {
        let opened = open(line)?;
        if let Some(last) = &self.last {
            if opened.header.seq != last.seq + 1 {
                return Err(Fault::OutOfSequence {
                    expected: last.seq + 1,
                    found: opened.header.seq,
                });
            }
            if opened.header.prev != last.hash {
                return Err(Fault::ChainBroken {
                    expected: last.hash.clone(),
                    found: opened.header.prev.clone(),
                });
            }
        }
        self.last = Some(Link {
            seq: opened.header.seq,
            hash: opened.hash.clone(),
        });
        Ok(opened)
    }

    /// The last record accepted (or the anchor it started after).
    pub fn last(&self) -> Option<&Link> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, prev: &str) -> (String, String) {
        seal(format!(
            "{{\"seq\":{seq},\"prev\":\"{prev}\",\"time\":\"2025-01-02T03:04:05Z\",\"kind\":\"test\",\"n\":{seq}}}"
        ))
    }

    #[test]
    fn sealed_lines_open_and_chain() {
        let (first, first_hash) = record(1, GENESIS);
        let (second, _) = record(2, &first_hash);
        let mut cursor = Cursor::genesis();
        assert_eq!(cursor.accept(first.as_bytes()).unwrap().hash, first_hash);
        assert_eq!(cursor.accept(second.as_bytes()).unwrap().header.seq, 2);
        assert!(first.ends_with(&format!(",\"hash\":\"{first_hash}\"}}")));
    }

    #[test]
    fn any_changed_byte_is_an_edit() {
        let (line, _) = record(1, GENESIS);
        let edited = line.replace("\"n\":1", "\"n\":2");
        assert!(matches!(open(edited.as_bytes()), Err(Fault::Edited { .. })));
        let respaced = line.replace("\"n\":1", "\"n\": 1");
        assert!(matches!(
            open(respaced.as_bytes()),
            Err(Fault::Edited { .. })
        ));
        assert!(matches!(
            open(&line.as_bytes()[..line.len() - 3]),
            Err(Fault::Unreadable(_))
        ));
    }

    #[test]
    fn order_and_links_are_checked() {
        let (first, first_hash) = record(1, GENESIS);
        let (_, second_hash) = record(2, &first_hash);
        let (third, _) = record(3, &second_hash);
        let mut cursor = Cursor::genesis();
        cursor.accept(first.as_bytes()).unwrap();
        assert_eq!(
            cursor.accept(third.as_bytes()).unwrap_err(),
            Fault::OutOfSequence {
                expected: 2,
                found: 3
            }
        );
        let (forged, _) = record(2, GENESIS);
        assert!(matches!(
            cursor.accept(forged.as_bytes()),
            Err(Fault::ChainBroken { .. })
        ));
        assert!(Cursor::unanchored().accept(third.as_bytes()).is_ok());
    }
}
