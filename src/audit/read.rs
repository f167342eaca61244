//! The log's records read back, typed, for every reader: cost reports and run
//! rebuilding (through `query`, from the live log), `warden tune` and `warden policy
//! replay` (from files, here). Each matches on the kind it wants and takes its fields
//! from the typed record.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::record::{BusinessOutcome, RequestRecord, OUTCOME_KIND, REQUEST_KIND};
use super::segment::{holds_no_record, jsonl_files};

#[derive(Debug, Clone, PartialEq)]
pub enum AuditRecord {
    Request(Box<RequestRecord>),
    Outcome(BusinessOutcome),
    /// Any other kind (operator actions), or a line of an exported log with no kind:
    /// the record as written.
    Other(Value),
}

impl AuditRecord {
    /// Types one record by its `kind`.
    pub fn parse(record: Value) -> Result<Self, serde_json::Error> {
        match record.get("kind").and_then(Value::as_str) {
            Some(REQUEST_KIND) => Ok(AuditRecord::Request(Box::new(serde_json::from_value(
                record,
            )?))),
            Some(OUTCOME_KIND) => Ok(AuditRecord::Outcome(serde_json::from_value(record)?)),
            _ => Ok(AuditRecord::Other(record)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A line that is not JSON, or not a record of the kind it names.
    #[error("{}:{line}: {message}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Where a record was read, for errors that name the line.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub path: &'a Path,
    pub line: usize,
}

impl Place<'_> {
    pub fn malformed(&self, message: impl ToString) -> ReadError {
        ReadError::Malformed {
            path: self.path.to_path_buf(),
            line: self.line,
            message: message.to_string(),
        }
    }
}

/// Reads the JSONL files at `path` in order: an audit folder (its `.jsonl` files by
/// name), one of its files, or an exported log. `visit` gets each record, or what is
/// wrong with its line, and its place; an error it returns ends the reading, and so
/// does a file that cannot be read.
pub fn read_files(
    path: &Path,
    visit: &mut impl FnMut(Result<AuditRecord, ReadError>, Place<'_>) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ReadError::Io { path, error }
    };
    for file in jsonl_files(path).map_err(io(path))? {
        let opened = std::fs::File::open(&file).map_err(io(&file))?;
        read_lines(std::io::BufReader::new(opened), &file, visit)?;
    }
    Ok(())
}

/// Reads one JSONL stream, as [`read_files`]; `path` names it in errors.
pub fn read_lines(
    reader: impl BufRead,
    path: &Path,
    visit: &mut impl FnMut(Result<AuditRecord, ReadError>, Place<'_>) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|error| ReadError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        if holds_no_record(&line) {
            continue;
        }
        let place = Place {
            path,
            line: index + 1,
        };
        let record = serde_json::from_str(&line)
            .and_then(AuditRecord::parse)
            .map_err(|error| place.malformed(error));
        visit(record, place)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[test]
    fn records_are_typed_by_kind_and_bad_lines_are_named() {
        let log = [
            r#"{"kind":"outcome","run_id":"r","outcome":"ticket","status":"failure","agent":"a","tenant":"t"}"#,
            r#"{"kind":"kill_switch","action":"kill_switch_engaged"}"#,
            "",
            r#"{"kind":"request","agent":"a"}"#,
            "not json",
        ]
        .join("\n");
        let mut read = Vec::new();
        read_lines(
            log.as_bytes(),
            Path::new("audit.jsonl"),
            &mut |record, place| {
                read.push((record, place.line));
                Ok(())
            },
        )
        .unwrap();
        assert!(
            matches!(&read[0], (Ok(AuditRecord::Outcome(outcome)), 1) if outcome.run_id == "r")
        );
        assert!(matches!(&read[1], (Ok(AuditRecord::Other(_)), 2)));
        // A request record without the fields every request has is not one.
        let malformed_at = |entry: &(Result<AuditRecord, ReadError>, usize)| match &entry.0 {
            Err(ReadError::Malformed { path, line, .. }) => {
                assert_eq!(path, Path::new("audit.jsonl"));
                *line
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(malformed_at(&read[2]), 4);
        assert_eq!(malformed_at(&read[3]), 5);
        assert_eq!(read.len(), 4);
    }
}
