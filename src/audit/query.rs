//! Reading the log back as JSON records, in chain order, for `GET /admin/audit`, cost
//! reports and rebuilding run state at start-up. Integrity is `verify`'s concern; this
//! reads what is there, skipping only a last line still being written.
//!
//! Time bounds skip whole segments by the time of their first record. Records are timed
//! as they are written, so times only go back if the system clock steps back; a record
//! written during such a step near a bound may be left out.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::segment::{self, lines, Segment};
use super::AuditError;

/// Which records to read; every field left `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub run_id: Option<String>,
    pub agent: Option<String>,
    pub kind: Option<String>,
    /// Records written at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Records written before this time.
    pub to: Option<DateTime<Utc>>,
}

impl Filter {
    fn matches(&self, record: &Value) -> bool {
        let field_is = |name: &str, wanted: &Option<String>| {
            wanted
                .as_deref()
                .is_none_or(|wanted| record[name].as_str() == Some(wanted))
        };
        let time = record_time(record);
        field_is("run_id", &self.run_id)
            && field_is("agent", &self.agent)
            && field_is("kind", &self.kind)
            && self.from.is_none_or(|from| time.is_some_and(|t| t >= from))
            && self.to.is_none_or(|to| time.is_some_and(|t| t < to))
    }
}

fn record_time(record: &Value) -> Option<DateTime<Utc>> {
    record["time"].as_str()?.parse().ok()
}

/// Records matching a filter, oldest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub records: Vec<Value>,
    /// More records matched than the limit allowed.
    pub truncated: bool,
}

pub fn query(dir: &Path, filter: &Filter, limit: usize) -> Result<Page, AuditError> {
    let mut records = Vec::new();
    let mut truncated = false;
    for_each(dir, filter, |record| {
        if records.len() == limit {
            truncated = true;
            return ControlFlow::Break(());
        }
        records.push(record);
        ControlFlow::Continue(())
    })?;
    Ok(Page { records, truncated })
}

/// Every record, oldest first.
pub fn read_all(dir: &Path) -> Result<Vec<Value>, AuditError> {
    Ok(query(dir, &Filter::default(), usize::MAX)?.records)
}

/// Calls `visit` with each record matching `filter`, in chain order, until it breaks.
pub fn for_each(
    dir: &Path,
    filter: &Filter,
    mut visit: impl FnMut(Value) -> ControlFlow<()>,
) -> Result<(), AuditError> {
    let segments = segment::list(dir)?;
    let starts = segments
        .iter()
        .map(first_time)
        .collect::<Result<Vec<_>, _>>()?;
    for (index, segment) in segments.iter().enumerate() {
        let next_start = starts.get(index + 1).copied().flatten();
        if let (Some(from), Some(next_start)) = (filter.from, next_start) {
            if next_start < from {
                continue;
            }
        }
        if let (Some(to), Some(start)) = (filter.to, starts[index]) {
            if start >= to {
                break;
            }
        }
        let bytes = segment.read()?;
        for line in lines(&bytes).filter(|line| line.complete) {
            let record: Value =
                serde_json::from_slice(line.bytes).map_err(|error| AuditError::Damaged {
                    file: segment.path.clone(),
                    line: line.number,
                    problem: format!("not JSON: {error}"),
                })?;
            if filter.matches(&record) && visit(record).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The time of a segment's first record; `None` for an empty segment.
fn first_time(segment: &Segment) -> Result<Option<DateTime<Utc>>, AuditError> {
    let file = File::open(&segment.path).map_err(|e| AuditError::io(&segment.path, e))?;
    let mut first = String::new();
    BufReader::new(file)
        .read_line(&mut first)
        .map_err(|e| AuditError::io(&segment.path, e))?;
    Ok(serde_json::from_str::<Value>(&first)
        .ok()
        .as_ref()
        .and_then(record_time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::config;
    use crate::audit::{AuditConfig, AuditLog};
    use crate::metrics::Metrics;
    use serde_json::json;

    #[tokio::test]
    async fn filters_by_field_and_time_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AuditConfig {
            segment_bytes: 300,
            ..config(dir.path())
        };
        let log = AuditLog::open(&settings, Metrics::new().unwrap().audit.clone()).unwrap();
        for n in 0..12 {
            let run = if n % 3 == 0 { "r0" } else { "r1" };
            log.append_event("step", &json!({"run_id": run, "agent": "a", "n": n}))
                .await
                .unwrap();
        }
        let all = read_all(dir.path()).unwrap();
        assert_eq!(all.len(), 12);
        assert!(segment::list(dir.path()).unwrap().len() > 3);

        let runs = Filter {
            run_id: Some("r0".into()),
            ..Filter::default()
        };
        let page = query(dir.path(), &runs, 100).unwrap();
        let ns: Vec<i64> = page
            .records
            .iter()
            .map(|r| r["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, [0, 3, 6, 9]);
        assert!(!page.truncated);
        let page = query(dir.path(), &runs, 2).unwrap();
        assert_eq!((page.records.len(), page.truncated), (2, true));

        let time = |n: usize| record_time(&all[n]).unwrap();
        let window = Filter {
            from: Some(time(5)),
            to: Some(time(9)),
            ..Filter::default()
        };
        let ns: Vec<i64> = query(dir.path(), &window, 100)
            .unwrap()
            .records
            .iter()
            .map(|r| r["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, [5, 6, 7, 8]);
    }

    #[test]
    fn a_line_being_written_is_skipped_but_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::new(dir.path(), 1);
        std::fs::write(&segment.path, "{\"kind\":\"a\"}\n{\"kind\":").unwrap();
        assert_eq!(read_all(dir.path()).unwrap().len(), 1);
        std::fs::write(&segment.path, "{\"kind\":\"a\"}\nnope\n").unwrap();
        assert!(matches!(
            read_all(dir.path()),
            Err(AuditError::Damaged { line: 2, .. })
        ));
    }
}
