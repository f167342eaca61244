//! Start-up: find where the chain ends so appending can continue it, and repair what a
//! crash can leave behind.
//!
//! Records are only ever appended, and acknowledged only once fsynced, so a crash can
//! leave exactly one kind of damage: bytes after the last whole record that form no
//! record (a line cut short). Zeros after the records are the room the writer extends
//! the segment with, not damage: appending continues over them. The other bytes are
//! moved aside to `<segment>.torn-<unix ms>` (never dropped), the segment is
//! cut back to its last whole record, and the repair is reported. Anything else (a sealed
//! record after a bad one, a `HEAD` past the end) is not a crash: start-up stops and
//! names the place, for an operator to look at with `warden audit verify`.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::chain::{self, Cursor, Link};
use super::segment::{self, lines, Segment};
use super::{head, AuditError};

/// Where appending resumes.
#[derive(Debug)]
pub struct Recovered {
    pub segment: Segment,
    /// The segment's length after any repair.
    pub size: u64,
    pub last: Link,
    pub torn: Option<TornTail>,
}

/// A torn last line found at start-up and moved aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TornTail {
    pub segment: PathBuf,
    pub moved_to: PathBuf,
    pub bytes: u64,
    /// The last whole record, which the chain continues from.
    pub after_seq: u64,
}

pub fn recover(dir: &Path) -> Result<Recovered, AuditError> {
    fs::create_dir_all(dir).map_err(|source| AuditError::io(dir, source))?;
    let segments = segment::list(dir)?;
    let Some(current) = segments.last().cloned() else {
        let first = Segment::new(dir, 1);
        create(&first)?;
        segment::sync_dir(dir)?;
        check_head(dir, &Link::genesis())?;
        return Ok(Recovered {
            segment: first,
            size: 0,
            last: Link::genesis(),
            torn: None,
        });
    };
    let mut cursor = match segments.iter().rev().nth(1) {
        Some(previous) => Cursor::after(last_record(previous)?),
        None => Cursor::genesis(),
    };
    let bytes = current.read()?;
    let mut whole_end = 0;
    let mut first_fault = None;
    for line in lines(&bytes).take_while(|line| line.complete) {
        match cursor.accept(line.bytes) {
            Ok(_) => whole_end = line.end(),
            Err(fault) => {
                first_fault = Some((line.number, fault));
                break;
            }
        }
    }
    let last = cursor.last().cloned().unwrap_or_else(Link::genesis);
    let rest = &bytes[whole_end..];
    if let Some(sealed) = lines(rest).find(|line| chain::open(line.bytes).is_ok()) {
        let (line, problem) = match first_fault {
            Some((line, fault)) => (line, fault.to_string()),
            None => (sealed.number, "a record follows a damaged line".into()),
        };
        return Err(AuditError::Damaged {
            file: current.path.clone(),
            line,
            problem,
        });
    }
    // Everything is checked before anything is changed: a start that is refused leaves
    // the log byte for byte as it found it, for `warden audit verify` to read.
    if let Err(truncated) = check_head(dir, &last) {
        // HEAD vouches for a record past the last good one: what follows it is no torn
        // write but an acknowledged record that no longer verifies (edited).
        return Err(match first_fault {
            Some((line, fault)) => AuditError::Damaged {
                file: current.path.clone(),
                line,
                problem: format!("{fault}, and HEAD names a later record as written"),
            },
            None => truncated,
        });
    }
    let torn = if rest.is_empty() {
        None
    } else {
        Some(move_aside(&current, whole_end, rest, last.seq)?)
    };
    Ok(Recovered {
        segment: current,
        size: whole_end as u64,
        last,
        torn,
    })
}

pub fn create(segment: &Segment) -> Result<(), AuditError> {
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&segment.path)
        .map(drop)
        .map_err(|source| AuditError::io(&segment.path, source))
}

/// The last record of a segment that is not the newest: it must end in a whole record.
fn last_record(segment: &Segment) -> Result<Link, AuditError> {
    let bytes = segment.read()?;
    let last = lines(&bytes).last().ok_or_else(|| AuditError::Damaged {
        file: segment.path.clone(),
        line: 1,
        problem: "an empty segment before the newest one".into(),
    })?;
    let opened = chain::open(last.bytes)
        .ok()
        .filter(|_| last.complete)
        .ok_or_else(|| AuditError::Damaged {
            file: segment.path.clone(),
            line: last.number,
            problem: "an older segment must end with a whole record".into(),
        })?;
    Ok(Link {
        seq: opened.header.seq,
        hash: opened.hash,
    })
}

fn move_aside(
    segment: &Segment,
    whole_end: usize,
    torn: &[u8],
    after_seq: u64,
) -> Result<TornTail, AuditError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AuditError::io(&path, source)
    };
    let (moved_to, mut copy) = torn_file(segment)?;
    std::io::Write::write_all(&mut copy, torn)
        .and_then(|()| copy.sync_all())
        .map_err(io(&moved_to))?;
    let file = OpenOptions::new()
        .write(true)
        .open(&segment.path)
        .map_err(io(&segment.path))?;
    file.set_len(whole_end as u64)
        .and_then(|()| file.sync_all())
        .map_err(io(&segment.path))?;
    if let Some(dir) = segment.path.parent() {
        segment::sync_dir(dir)?;
    }
    let tail = TornTail {
        segment: segment.path.clone(),
        moved_to,
        bytes: torn.len() as u64,
        after_seq,
    };
    tracing::warn!(
        segment = %tail.segment.display(),
        moved_to = %tail.moved_to.display(),
        bytes = tail.bytes,
        after_seq,
        "the audit log ended in a torn line (a crash while writing); moved it aside, the chain continues from the last whole record"
    );
    Ok(tail)
}

/// A new file beside the segment for its torn tail; an earlier repair's is never
/// overwritten.
fn torn_file(segment: &Segment) -> Result<(PathBuf, std::fs::File), AuditError> {
    let millis = chrono::Utc::now().timestamp_millis();
    let mut attempt = 0u32;
    loop {
        let suffix = match attempt {
            0 => String::new(),
            n => format!("-{n}"),
        };
        let path = PathBuf::from(format!("{}.torn-{millis}{suffix}", segment.path.display()));
        match OpenOptions::new().create_new(true).write(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => attempt += 1,
            Err(source) => return Err(AuditError::io(&path, source)),
        }
    }
}

/// `HEAD` names the last record known durable: the log must still reach it.
fn check_head(dir: &Path, last: &Link) -> Result<(), AuditError> {
    let Some(head) = head::read(dir)? else {
        return Ok(());
    };
    if head.seq > last.seq || (head.seq == last.seq && head.hash != last.hash) {
        return Err(AuditError::Truncated {
            dir: dir.to_path_buf(),
            head: head.seq,
            last: last.seq,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{seal, GENESIS};

    fn line(seq: u64, prev: &str) -> (String, String) {
        seal(format!(
            "{{\"seq\":{seq},\"prev\":\"{prev}\",\"time\":\"2025-01-02T03:04:05Z\",\"kind\":\"test\"}}"
        ))
    }

    fn two_records() -> (String, Link) {
        let (first, hash) = line(1, GENESIS);
        let (second, hash) = line(2, &hash);
        (format!("{first}\n{second}\n"), Link { seq: 2, hash })
    }

    #[test]
    fn an_empty_directory_starts_a_chain() {
        let dir = tempfile::tempdir().unwrap();
        let recovered = recover(&dir.path().join("audit")).unwrap();
        assert_eq!(recovered.last, Link::genesis());
        assert_eq!(recovered.segment.number, 1);
        assert!(recovered.segment.path.exists());
    }

    #[test]
    fn a_torn_line_is_moved_aside_and_the_chain_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (whole, last) = two_records();
        let segment = Segment::new(dir.path(), 1);
        // A tear, over the zeros ahead of the records or past the end of the file.
        for (torn, zeros) in [
            ("{\"seq\":3,\"prev\":\"ab", ""),
            ("{\"seq\":3,\"prev\":\"ab", "\0\0\0"),
            ("garbage\n", "\0\0"),
        ] {
            fs::write(&segment.path, format!("{whole}{torn}{zeros}")).unwrap();
            let recovered = recover(dir.path()).unwrap();
            assert_eq!(recovered.last, last);
            assert_eq!(recovered.size, whole.len() as u64);
            let tail = recovered.torn.unwrap();
            assert_eq!(tail.after_seq, 2);
            assert_eq!(fs::read(&tail.moved_to).unwrap(), torn.as_bytes());
            assert_eq!(fs::read_to_string(&segment.path).unwrap(), whole);
            assert!(recover(dir.path()).unwrap().torn.is_none());
        }
    }

    #[test]
    fn zeros_after_the_records_are_room_to_append_not_a_tear() {
        let dir = tempfile::tempdir().unwrap();
        let (whole, last) = two_records();
        let segment = Segment::new(dir.path(), 1);
        let extended = format!("{whole}\0\0\0\0");
        fs::write(&segment.path, &extended).unwrap();
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.last, last);
        assert_eq!(recovered.size, whole.len() as u64);
        assert!(recovered.torn.is_none());
        assert_eq!(fs::read_to_string(&segment.path).unwrap(), extended);
    }

    #[test]
    fn damage_before_a_whole_record_is_not_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let (first, hash) = line(1, GENESIS);
        let (second, _) = line(2, &hash);
        let segment = Segment::new(dir.path(), 1);
        fs::write(&segment.path, format!("{first}\nXX{first}\n{second}\n")).unwrap();
        match recover(dir.path()) {
            Err(AuditError::Damaged { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected damage, got {other:?}"),
        }
        fs::write(&segment.path, format!("{first}\n{first}\n")).unwrap();
        assert!(matches!(
            recover(dir.path()),
            Err(AuditError::Damaged { line: 2, .. })
        ));
    }

    /// Every file of a folder and its bytes.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let bytes = fs::read(&path).unwrap();
                (path, bytes)
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn an_edited_acknowledged_record_is_refused_without_touching_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (first, hash) = line(1, GENESIS);
        let (second, last_hash) = line(2, &hash);
        let segment = Segment::new(dir.path(), 1);
        let mut head = head::HeadWriter::open(dir.path()).unwrap();
        head.write(&Link {
            seq: 2,
            hash: last_hash,
        })
        .unwrap();
        // The last record edited: its hash no longer matches, so it reads as a torn
        // line would; HEAD says it was acknowledged.
        let edited = second.replace("\"kind\":\"test\"", "\"kind\":\"tset\"");
        assert_ne!(edited, second);
        fs::write(&segment.path, format!("{first}\n{edited}\n")).unwrap();
        let before = snapshot(dir.path());
        match recover(dir.path()) {
            Err(AuditError::Damaged { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected damage, got {other:?}"),
        }
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn the_chain_continues_across_segments_and_head_must_be_reached() {
        let dir = tempfile::tempdir().unwrap();
        let (whole, last) = two_records();
        fs::write(Segment::new(dir.path(), 1).path, &whole).unwrap();
        fs::write(Segment::new(dir.path(), 2).path, "").unwrap();
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered.last, last);
        assert_eq!(recovered.segment.number, 2);

        let mut head = head::HeadWriter::open(dir.path()).unwrap();
        head.write(&Link {
            seq: 3,
            hash: GENESIS.into(),
        })
        .unwrap();
        assert!(matches!(
            recover(dir.path()),
            Err(AuditError::Truncated {
                head: 3,
                last: 2,
                ..
            })
        ));
    }
}
