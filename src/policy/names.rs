//! Tool-name identity: names are compared after NFKC normalisation, case folding and
//! the removal of invisible characters, so `Send_Email`, `ｓｅｎｄ_ｅｍａｉｌ` and
//! `send\u{200b}_email` are all the tool `send_email` to every rule. Also the glob
//! patterns rules name tools with.

use unicode_normalization::UnicodeNormalization;

/// Code points that render as nothing (zero-width spaces and joiners, bidi controls,
/// variation selectors, tag characters, the soft hyphen...): Unicode's
/// Default_Ignorable_Code_Point set, which NFKC leaves in place.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// The identity a text is compared by: invisible characters removed, NFKC, lower case,
/// NFKC again (lower-casing can produce sequences that compose differently).
pub fn fold(text: &str) -> String {
    // ASCII is its own NFKC form and holds no invisible characters.
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    let visible: String = text.chars().filter(|&c| !is_invisible(c)).collect();
    let lowered = visible.nfkc().collect::<String>().to_lowercase();
    lowered.nfkc().filter(|&c| !is_invisible(c)).collect()
}

/// A name pattern: exact, or a glob where `*` is any run of characters and `?` any one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    Glob(Vec<char>),
}

impl NamePattern {
    /// `fold_case` folds the pattern as tool names are folded; other identifiers
    /// (agents, tenants, roles) are compared exactly.
    pub fn new(pattern: &str, fold_case: bool) -> Self {
        let pattern = if fold_case {
            fold(pattern)
        } else {
            pattern.to_string()
        };
        if pattern.contains(['*', '?']) {
            NamePattern::Glob(pattern.chars().collect())
        } else {
            NamePattern::Exact(pattern)
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(exact) => exact == name,
            NamePattern::Glob(glob) => glob_match(glob, name),
        }
    }

    pub fn exact(&self) -> Option<&str> {
        match self {
            NamePattern::Exact(exact) => Some(exact),
            NamePattern::Glob(_) => None,
        }
    }

    /// Whether every name `other` matches is also matched by `self` (used to find
    /// rules an earlier rule shadows; `false` when it cannot tell).
    pub fn covers(&self, other: &NamePattern) -> bool {
        match other {
            NamePattern::Exact(name) => self.matches(name),
            NamePattern::Glob(glob) => match self {
                NamePattern::Glob(mine) => mine == glob || mine.iter().all(|&c| c == '*'),
                NamePattern::Exact(_) => false,
            },
        }
    }
}

/// Iterative wildcard matching with single-star backtracking: linear in practice,
/// never exponential.
fn glob_match(pattern: &[char], name: &str) -> bool {
    let text: Vec<char> = name.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alikes_fold_to_one_name() {
        for variant in [
            "send_email",
            "Send_Email",
            "SEND_EMAIL",
            "ｓｅｎｄ_ｅｍａｉｌ",
            "send\u{200b}_email",
            "\u{feff}send_em\u{00ad}ail",
            "𝐬𝐞𝐧𝐝_𝐞𝐦𝐚𝐢𝐥",
            "send_e\u{200d}mail\u{e0041}",
        ] {
            assert_eq!(fold(variant), "send_email", "{variant:?}");
        }
        // Cyrillic `ѕ` is another letter, not a compatibility form: it stays apart.
        assert_ne!(fold("ѕend_email"), "send_email");
    }

    #[test]
    fn globs_match_folded_names() {
        let pattern = NamePattern::new("DB_*", true);
        assert!(pattern.matches(&fold("db_delete")));
        assert!(!pattern.matches("xdb_delete"));
        let pattern = NamePattern::new("*_delete_*", true);
        assert!(pattern.matches("db_delete_row"));
        assert!(!pattern.matches("db_delete"));
        assert!(NamePattern::new("get_?", true).matches("get_x"));
        assert!(NamePattern::new("*", true).matches(""));
        assert!(!NamePattern::new("a*b*c", true).matches("aXbXd"));
        assert!(NamePattern::new("a*b*c", true).matches("aXbXc"));
    }

    #[test]
    fn coverage_is_conservative() {
        let all = NamePattern::new("*", true);
        let db = NamePattern::new("db_*", true);
        assert!(all.covers(&db));
        assert!(db.covers(&NamePattern::new("db_read", true)));
        assert!(!db.covers(&all));
        assert!(!NamePattern::new("db_read", true).covers(&db));
    }
}
