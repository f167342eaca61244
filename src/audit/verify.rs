//! `warden audit verify`: walk every chain from its first record to its last, across
//! segments, and name the first record that is not what it should be.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::chain::{Cursor, Fault, Link};
use super::segment::{self, lines, Segment};
use super::{head, AuditError, Receipt};

/// A log that checked out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub segments: usize,
    pub records: u64,
    /// The last record: keep it somewhere else to be able to prove later that nothing
    /// after it was cut off together with `HEAD`.
    pub head: Option<Receipt>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Unreadable(#[from] AuditError),
    #[error("{}: line {line}{}: {problem}", file.display(), seq.map(|seq| format!(" (seq {seq})")).unwrap_or_default())]
    BadRecord {
        file: PathBuf,
        line: usize,
        /// The bad record's own `seq`, when it can still be read.
        seq: Option<u64>,
        problem: String,
    },
    #[error("{}: the log ends at seq {last} but HEAD names seq {head}: records were cut off the end", dir.display())]
    Truncated { dir: PathBuf, head: u64, last: u64 },
}

/// Verifies a log directory (every segment, and `HEAD`), or a single segment file on
/// its own (its first record is then taken on trust).
pub fn verify(path: &Path) -> Result<Verified, VerifyError> {
    if path.is_file() {
        let segment = Segment {
            number: 0,
            path: path.to_path_buf(),
        };
        let mut cursor = Cursor::unanchored();
        let records = walk(&segment, &mut cursor, None)?;
        return Ok(Verified {
            segments: 1,
            records,
            head: receipt(cursor.last()),
        });
    }
    let recorded_head = head::read(path)?;
    let segments = segment::list(path)?;
    let mut cursor = Cursor::genesis();
    let mut records = 0;
    for segment in &segments {
        records += walk(segment, &mut cursor, recorded_head.as_ref())?;
    }
    let last = cursor.last().cloned().unwrap_or_else(Link::genesis);
    if let Some(recorded) = recorded_head.filter(|recorded| recorded.seq > last.seq) {
        return Err(VerifyError::Truncated {
            dir: path.to_path_buf(),
            head: recorded.seq,
            last: last.seq,
        });
    }
    Ok(Verified {
        segments: segments.len(),
        records,
        head: receipt(Some(&last)),
    })
}

fn receipt(link: Option<&Link>) -> Option<Receipt> {
    link.filter(|link| link.seq > 0).map(|link| Receipt {
        seq: link.seq,
        hash: link.hash.clone(),
    })
}

/// Checks one segment's records in order; returns how many there were.
fn walk(
    segment: &Segment,
    cursor: &mut Cursor,
    recorded_head: Option<&Link>,
) -> Result<u64, VerifyError> {
    let bytes = segment.read()?;
    let mut records = 0;
    for line in lines(&bytes) {
        let bad = |problem: String| VerifyError::BadRecord {
            file: segment.path.clone(),
            line: line.number,
            seq: serde_json::from_slice::<serde_json::Value>(line.bytes)
                .ok()
                .and_then(|record| record["seq"].as_u64()),
            problem,
        };
        if !line.complete {
            return Err(bad(
                "the last line is incomplete (a write cut short; start-up moves it aside)".into(),
            ));
        }
        let opened = cursor
            .accept(line.bytes)
            .map_err(|fault: Fault| bad(fault.to_string()))?;
        if let Some(recorded) = recorded_head.filter(|r| r.seq == opened.header.seq) {
            if recorded.hash != opened.hash {
                return Err(bad(format!(
                    "HEAD says record {} hashes to {}, it hashes to {}",
                    recorded.seq, recorded.hash, opened.hash
                )));
            }
        }
        records += 1;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::config;
    use crate::audit::AuditLog;
    use crate::metrics::Metrics;
    use serde_json::json;
    use std::fs;

    /// A log of five records in two segments; returns the segment files.
    async fn five_records(dir: &Path) -> Vec<PathBuf> {
        let settings = crate::audit::AuditConfig {
            segment_bytes: 400,
            ..config(dir)
        };
        let log = AuditLog::open(&settings, Metrics::new().unwrap().audit.clone()).unwrap();
        for n in 1..=5 {
            log.append_event("test", &json!({"n": n, "pad": "x".repeat(90)}))
                .await
                .unwrap();
        }
        drop(log);
        let segments: Vec<PathBuf> = segment::list(dir)
            .unwrap()
            .into_iter()
            .map(|s| s.path)
            .filter(|p| fs::metadata(p).unwrap().len() > 0)
            .collect();
        assert!(segments.len() >= 2, "{segments:?}");
        segments
    }

    fn all_lines(segments: &[PathBuf]) -> Vec<(PathBuf, String)> {
        segments
            .iter()
            .flat_map(|path| {
                fs::read_to_string(path)
                    .unwrap()
                    .lines()
                    .map(|line| (path.clone(), line.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn rewrite(lines: &[(PathBuf, String)], segments: &[PathBuf]) {
        for segment in segments {
            let text: String = lines
                .iter()
                .filter(|(path, _)| path == segment)
                .map(|(_, line)| format!("{line}\n"))
                .collect();
            fs::write(segment, text).unwrap();
        }
    }

    fn first_bad(dir: &Path) -> (PathBuf, usize, Option<u64>) {
        match verify(dir) {
            Err(VerifyError::BadRecord {
                file, line, seq, ..
            }) => (file, line, seq),
            other => panic!("expected a bad record, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_intact_log_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let segments = five_records(dir.path()).await;
        let verified = verify(dir.path()).unwrap();
        assert_eq!(verified.records, 5);
        assert_eq!(verified.head.unwrap().seq, 5);
        assert!(verify(&segments[1]).is_ok());
    }

    #[tokio::test]
    async fn every_kind_of_tampering_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let segments = five_records(dir.path()).await;
        let original = all_lines(&segments);
        // Where the record at `index` of `lines` sits once they are written back.
        let locate = |lines: &[(PathBuf, String)], index: usize| {
            let path = &lines[index].0;
            let line = lines[..index].iter().filter(|(p, _)| p == path).count() + 1;
            (path.clone(), line)
        };

        // An edit, even one that keeps the JSON meaning the same.
        let mut lines = original.clone();
        lines[2].1 = lines[2].1.replace("\"n\":3", "\"n\":30");
        rewrite(&lines, &segments);
        let (file, line, seq) = first_bad(dir.path());
        assert_eq!((file, line), locate(&lines, 2));
        assert_eq!(seq, Some(3));

        // A deletion: the record after the gap is named.
        let mut lines = original.clone();
        lines.remove(1);
        rewrite(&lines, &segments);
        let (file, line, seq) = first_bad(dir.path());
        assert_eq!((file, line), locate(&lines, 1));
        assert_eq!(seq, Some(3));

        // An insertion: a copy of a genuine record.
        let mut lines = original.clone();
        lines.insert(2, original[0].clone());
        rewrite(&lines, &segments);
        assert_eq!(first_bad(dir.path()).2, Some(1));

        // A reordering.
        let mut lines = original.clone();
        lines.swap(3, 4);
        let (a, b) = (lines[3].0.clone(), lines[4].0.clone());
        lines[3].0 = b;
        lines[4].0 = a;
        rewrite(&lines, &segments);
        assert_eq!(first_bad(dir.path()).2, Some(5));

        // The end cut off: HEAD still names the last record.
        let mut lines = original.clone();
        lines.pop();
        rewrite(&lines, &segments);
        assert!(matches!(
            verify(dir.path()),
            Err(VerifyError::Truncated {
                head: 5,
                last: 4,
                ..
            })
        ));

        // A whole segment removed.
        rewrite(&original, &segments);
        assert!(verify(dir.path()).is_ok());
        fs::remove_file(&segments[0]).unwrap();
        assert_eq!(first_bad(dir.path()).0, segments[1]);
    }
}
