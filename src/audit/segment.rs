//! Segment files: their names, the order the chain runs through them, and reading one
//! line by line.
//!
//! With fsync on, the segment being written is extended with zero bytes ahead of its
//! records (see the writer), so a live or crashed segment can end in a run of zeros.
//! They are not part of the log: JSON text never holds a zero byte, and every reader
//! here stops before them.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::AuditError;

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub number: u64,
    pub path: PathBuf,
}

impl Segment {
    pub fn new(dir: &Path, number: u64) -> Self {
        Self {
            number,
            path: dir.join(format!("{PREFIX}{number:08}{SUFFIX}")),
        }
    }

    /// The segment's bytes, without the zeros it may be extended with.
    pub fn read(&self) -> Result<Vec<u8>, AuditError> {
        let mut bytes =
            fs::read(&self.path).map_err(|source| AuditError::io(&self.path, source))?;
        bytes.truncate(written_len(&bytes));
        Ok(bytes)
    }
}

/// How much of `bytes` was written: all but a trailing run of zeros.
pub fn written_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last + 1)
}

/// Whether a line of a JSONL file holds no record: blank, or part of the zeros a live
/// segment is extended with.
pub fn holds_no_record(line: &str) -> bool {
    line.trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .is_empty()
}

/// One `pwrite` where there is one: the writer runs this on every commit.
#[cfg(unix)]
pub fn write_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(not(unix))]
pub fn write_at(mut file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)
}

/// The segments in `dir`, in chain order. Other files (torn tails moved aside, `HEAD`)
/// are not segments.
pub fn list(dir: &Path) -> Result<Vec<Segment>, AuditError> {
    let entries = fs::read_dir(dir).map_err(|source| AuditError::io(dir, source))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| AuditError::io(dir, source))?;
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|name| name.strip_prefix(PREFIX))
            .and_then(|rest| rest.strip_suffix(SUFFIX))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(number) = number {
            segments.push(Segment {
                number,
                path: entry.path(),
            });
        }
    }
    segments.sort_by_key(|segment| segment.number);
    Ok(segments)
}

/// The JSONL files a reader of logs takes from `path`: the file itself, or every
/// `.jsonl` file in a folder by name, which for an audit folder is chain order (segment
/// numbers are zero-padded).
pub fn jsonl_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path)? {
        let file = entry?.path();
        if file.extension().is_some_and(|ext| ext == "jsonl") {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// Makes a new file's directory entry durable, so the file survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| AuditError::io(dir, source))
}

/// One line of a segment; `complete` when a newline ends it.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// 1-based, as editors count.
    pub number: usize,
    /// Where the line starts in the file.
    pub offset: usize,
    pub bytes: &'a [u8],
    pub complete: bool,
}

impl Line<'_> {
    /// Where the next line starts.
    pub fn end(&self) -> usize {
        self.offset + self.bytes.len() + usize::from(self.complete)
    }
}

pub fn lines(bytes: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let mut offset = 0;
    let mut number = 0;
    std::iter::from_fn(move || {
        let rest = bytes.get(offset..).filter(|rest| !rest.is_empty())?;
        number += 1;
        let (line, complete) = match rest.iter().position(|&byte| byte == b'\n') {
            Some(end) => (&rest[..end], true),
            None => (rest, false),
        };
        let item = Line {
            number,
            offset,
            bytes: line,
            complete,
        };
        offset = item.end();
        Some(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_listed_in_chain_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "audit-00000010.jsonl",
            "audit-00000002.jsonl",
            "audit-00000002.jsonl.torn-1",
            "HEAD",
        ] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        let numbers: Vec<u64> = list(dir.path()).unwrap().iter().map(|s| s.number).collect();
        assert_eq!(numbers, [2, 10]);
        assert_eq!(
            Segment::new(dir.path(), 2).path,
            dir.path().join("audit-00000002.jsonl")
        );
    }

    #[test]
    fn lines_know_whether_they_are_whole() {
        let found: Vec<(usize, &[u8], bool, usize)> = lines(b"ab\n\ncd")
            .map(|l| (l.number, l.bytes, l.complete, l.end()))
            .collect();
        assert_eq!(
            found,
            [
                (1, &b"ab"[..], true, 3),
                (2, &b""[..], true, 4),
                (3, &b"cd"[..], false, 6)
            ]
        );
        assert_eq!(lines(b"").count(), 0);
    }

    #[test]
    fn the_zeros_a_segment_is_extended_with_are_not_read() {
        assert_eq!(written_len(b"{}\n\0\0\0"), 3);
        assert_eq!(written_len(b"{}\n"), 3);
        assert_eq!(written_len(b"\0\0"), 0);
        assert_eq!(written_len(b"{\0}\0"), 3);
        assert!(holds_no_record("\0\0\0"));
        assert!(holds_no_record(" \t"));
        assert!(!holds_no_record("\0{}"));
    }
}
