//! The text the detectors read. A model can write a card number in fullwidth digits
//! (`４１１１`), an IBAN in Arabic-Indic ones, or split a key with zero-width spaces;
//! each must be found as its ASCII form is. So every character that stands for ASCII
//! text is replaced by it (NFKC compatibility forms, and any script's decimal digits by
//! their value), invisible characters are dropped, and each byte of the result
//! remembers which character of the original it came from, so what is found there is
//! masked in the original.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;
use unicode_normalization::char::decompose_compatible;

use crate::policy::names::is_invisible;

/// Unicode's decimal digits (general category Nd), of every script.
static DECIMAL_DIGIT: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"^\p{Nd}$").ok());

/// `original` as the detectors read it.
pub struct Folded<'a> {
    pub text: Cow<'a, str>,
    /// For each byte of `text`, the byte range of the character of `original` it came
    /// from; `None` when `text` is `original` itself (plain ASCII).
    origin: Option<Vec<(usize, usize)>>,
}

impl<'a> Folded<'a> {
    pub fn new(original: &'a str) -> Self {
        // ASCII has no compatibility forms, no other digits and nothing invisible.
        if original.is_ascii() {
            return Self {
                text: Cow::Borrowed(original),
                origin: None,
            };
        }
        let mut text = String::with_capacity(original.len());
        let mut origin = Vec::with_capacity(original.len());
        let mut ascii = String::new();
        for (start, c) in original.char_indices() {
            let end = start + c.len_utf8();
            if c.is_ascii() {
                text.push(c);
                origin.push((start, end));
                continue;
            }
            if is_invisible(c) {
                continue;
            }
            ascii.clear();
            if let Some(digit) = decimal_digit(c) {
                ascii.push(digit);
            } else {
                decompose_compatible(c, |part| ascii.push(part));
            }
            let replacement = if !ascii.is_empty() && ascii.is_ascii() {
                ascii.as_str()
            } else {
                ascii.clear();
                ascii.push(c);
                ascii.as_str()
            };
            text.push_str(replacement);
            origin.extend(std::iter::repeat_n((start, end), replacement.len()));
        }
        Self {
            text: Cow::Owned(text),
            origin: Some(origin),
        }
    }

    /// The range of the original that `start..end` of `text` was read from: whole
    /// characters, so a mask always covers all of what was found.
    pub fn original_range(&self, start: usize, end: usize) -> (usize, usize) {
        match &self.origin {
            None => (start, end),
            Some(origin) => {
                let first = origin.get(start).map_or(0, |range| range.0);
                let last = end
                    .checked_sub(1)
                    .and_then(|at| origin.get(at))
                    .map_or(first, |range| range.1);
                (first, last.max(first))
            }
        }
    }
}

/// Whether `c` reads as a visible ASCII character once folded: the characters keys,
/// tokens and addresses are made of.
pub fn reads_as_visible_ascii(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_graphic();
    }
    if decimal_digit(c).is_some() {
        return true;
    }
    let mut all_graphic = true;
    let mut any = false;
    decompose_compatible(c, |part| {
        any = true;
        all_graphic &= part.is_ascii_graphic();
    });
    any && all_graphic
}

/// The ASCII digit a decimal digit of any script stands for. Unicode encodes every
/// script's digits as one run of ten code points, zero to nine, and runs that touch
/// each start at a zero, so the digit's value is how many digits precede it in its
/// block, modulo ten.
fn decimal_digit(c: char) -> Option<char> {
    let is_digit = |c: char| {
        let mut buffer = [0u8; 4];
        DECIMAL_DIGIT
            .as_ref()
            .is_some_and(|regex| regex.is_match(c.encode_utf8(&mut buffer)))
    };
    if !is_digit(c) {
        return None;
    }
    let mut before = 0u32;
    let mut code = u32::from(c);
    while let Some(previous) = code.checked_sub(1).and_then(char::from_u32) {
        if !is_digit(previous) {
            break;
        }
        before += 1;
        code -= 1;
    }
    char::from_digit(before % 10, 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_forms_read_as_ascii_and_map_back_to_whole_characters() {
        let original = "Card: ４１１１ \u{200b}١٢ DE";
        let folded = Folded::new(original);
        assert_eq!(folded.text, "Card: 4111 12 DE");
        let at = folded.text.find("4111").unwrap();
        let (start, end) = folded.original_range(at, at + 4);
        assert_eq!(&original[start..end], "４１１１");
        let at = folded.text.find("12").unwrap();
        let (start, end) = folded.original_range(at, at + 2);
        assert_eq!(&original[start..end], "١٢");
    }

    #[test]
    fn digits_of_every_script_have_their_value() {
        for (zero, name) in [
            ('\u{0660}', "Arabic-Indic"),
            ('\u{0966}', "Devanagari"),
            ('\u{FF10}', "fullwidth"),
            ('\u{1D7CE}', "mathematical bold"),
            ('\u{1D7D8}', "mathematical double-struck"),
        ] {
            let digits: String = (0..10)
                .map(|i| char::from_u32(u32::from(zero) + i).unwrap())
                .collect();
            assert_eq!(Folded::new(&digits).text, "0123456789", "{name}");
        }
        assert_eq!(decimal_digit('a'), None);
        assert_eq!(Folded::new("é ½").text, "é ½");
    }

    #[test]
    fn what_reads_as_visible_ascii() {
        for c in ['a', '7', '@', 'Ａ', '７', '٣', '＠'] {
            assert!(reads_as_visible_ascii(c), "{c}");
        }
        for c in [' ', '\n', '東', 'é', '\u{3000}'] {
            assert!(!reads_as_visible_ascii(c), "{c:?}");
        }
    }

    #[test]
    fn ascii_is_read_as_it_is() {
        let folded = Folded::new("plain text 123");
        assert!(matches!(folded.text, Cow::Borrowed(_)));
        assert_eq!(folded.original_range(2, 5), (2, 5));
    }
}
