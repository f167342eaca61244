//! Files read again at run time (the configuration, the policy): what makes one unfit
//! to replace the running one, checked before it is parsed.

/// Refuses the text of a file read for a reload when it cannot be a whole
/// configuration: empty (or only comments), or cut off mid-line, as a write still under
/// way or an interrupted copy leaves it. At start an empty file means defaults; swapped
/// in at run time it would silently drop everything the running one holds.
pub fn check_reloaded_text(text: &str) -> Result<(), String> {
    let meaningful = text
        .lines()
        .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'));
    if !meaningful {
        return Err(
            "the file is empty: refused, the running one stays (a reload never falls back to defaults)"
                .into(),
        );
    }
    if !text.ends_with('\n') {
        return Err(
            "the file does not end with a line break, as a file cut short (a write still under way) does: refused, the running one stays"
                .into(),
        );
    }
    Ok(())
}
