//! The `HEAD` file: the seq and hash of the last record known durable. A chain alone
//! cannot show that its last records were cut off; `HEAD` can, unless it was rewritten
//! too (for that, record the head elsewhere: `warden audit verify` prints it).
//!
//! It is rewritten in place after every group commit, in a fixed width so a rewrite
//! never leaves a longer old value behind, and not fsynced: it may lag the log after a
//! power loss, never lead it, since it is written after the records it names are durable.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::chain::Link;
use super::segment::write_at;
use super::AuditError;

pub const HEAD_FILE: &str = "HEAD";

fn path(dir: &Path) -> PathBuf {
    dir.join(HEAD_FILE)
}

/// The recorded head; `None` before the first commit.
pub fn read(dir: &Path) -> Result<Option<Link>, AuditError> {
    let path = path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(AuditError::io(&path, source)),
    };
    let damaged = || AuditError::Damaged {
        file: path.clone(),
        line: 1,
        problem: "not `<seq> <hash>`".into(),
    };
    let (seq, hash) = text.trim_end().split_once(' ').ok_or_else(damaged)?;
    let seq = seq.parse::<u64>().map_err(|_| damaged())?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(damaged());
    }
    Ok(Some(Link {
        seq,
        hash: hash.to_string(),
    }))
}

pub struct HeadWriter {
    file: File,
    path: PathBuf,
}

impl HeadWriter {
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        let path = path(dir);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| AuditError::io(&path, source))?;
        Ok(Self { file, path })
    }

    pub fn write(&mut self, head: &Link) -> Result<(), AuditError> {
        let text = format!("{:020} {}\n", head.seq, head.hash);
        write_at(&self.file, text.as_bytes(), 0)
            .map_err(|source| AuditError::io(&self.path, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::GENESIS;

    #[test]
    fn head_round_trips_and_shrinking_values_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut writer = HeadWriter::open(dir.path()).unwrap();
        let long = Link {
            seq: 123_456,
            hash: "f".repeat(64),
        };
        let short = Link {
            seq: 7,
            hash: GENESIS.into(),
        };
        writer.write(&long).unwrap();
        writer.write(&short).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(short));
        std::fs::write(dir.path().join(HEAD_FILE), "garbage").unwrap();
        assert!(matches!(read(dir.path()), Err(AuditError::Damaged { .. })));
    }
}
