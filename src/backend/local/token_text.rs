//! Token ids back to bytes and text. Byte-level BPE stores each byte as a printable
//! character; undoing that mapping per token gives exact bytes for logprobs and lets
//! streaming hold back only an unfinished UTF-8 sequence instead of re-decoding.

use std::collections::HashMap;

/// The raw bytes each token stands for, indexed by token id.
pub struct TokenBytes {
    bytes: Vec<Vec<u8>>,
}

impl TokenBytes {
    /// `control` tokens (e.g. `<|im_end|>`) are kept as their literal text.
    pub fn new<'a>(
        tokens: impl IntoIterator<Item = &'a str>,
        is_control: impl Fn(usize) -> bool,
    ) -> Self {
        let char_to_byte = char_to_byte_table();
        let bytes = tokens
            .into_iter()
            .enumerate()
            .map(|(id, token)| {
                if is_control(id) {
                    return token.as_bytes().to_vec();
                }
                token
                    .chars()
                    .flat_map(|c| match char_to_byte.get(&c) {
                        Some(&byte) => vec![byte],
                        // Not a byte-level symbol: keep the character as it is.
                        None => c.to_string().into_bytes(),
                    })
                    .collect()
            })
            .collect();
        Self { bytes }
    }

    pub fn get(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// The most bytes any one token stands for (at least 1).
    pub fn longest(&self) -> usize {
        self.bytes.iter().map(Vec::len).max().unwrap_or(1).max(1)
    }
}

/// GPT-2's byte-to-character map, inverted: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes were shifted to code points from 256 on.
fn char_to_byte_table() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                let c = char::from_u32(256 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER);
                shifted += 1;
                (c, b)
            }
        })
        .collect()
}

/// Turns a stream of token bytes into text, emitting only whole UTF-8 characters.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match error.error_len() {
                        // An unfinished character: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left when generation ends can never complete.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_symbols_map_back_to_bytes() {
        let table = TokenBytes::new(["Ġworld", "Ċ", "<|im_end|>", "Ã©"], |id| id == 2);
        assert_eq!(table.get(0), b" world");
        assert_eq!(table.get(1), b"\n");
        assert_eq!(table.get(2), b"<|im_end|>");
        assert_eq!(table.get(3), "é".as_bytes());
        assert_eq!(table.get(99), b"");
    }

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let mut stream = Utf8Stream::default();
        let euro = "€".as_bytes();
        assert_eq!(stream.push(&euro[..1]), "");
        assert_eq!(stream.push(&euro[1..]), "€");
        assert_eq!(stream.push(b"ok"), "ok");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(stream.push(&[0xE2, 0x82]), "");
        assert_eq!(stream.finish(), "\u{FFFD}");
    }
}
