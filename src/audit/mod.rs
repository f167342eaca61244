//! The audit trail: an append-only, hash-chained JSONL log of every request and operator
//! event, made durable before the request it records is acknowledged.
//!
//! # Files (`audit.dir`)
//! - `audit-00000001.jsonl`, `audit-00000002.jsonl`, …: segments, one record per line.
//!   A segment is closed once it passes `audit.segment_bytes`; the chain runs on into the
//!   next one.
//! - `HEAD`: `<seq> <hash>` of the last record known durable ([`head`]).
//! - `audit-….jsonl.torn-<unix ms>`: a torn last line found at start-up, moved aside
//!   ([`recover`]).
//!
//! # Records (stable: fields are only ever added; readers ignore what they don't know)
//! Every line is one JSON object beginning with
//! `{"seq": 1, "prev": "<hex sha256>", "time": "2025-01-02T03:04:05.123456Z", "kind": "request", …`
//! and ending with `…, "hash": "<hex sha256>"}`. `seq` counts from 1 across segments;
//! `prev` is the previous record's `hash` (64 zeros for the first); `hash` covers the
//! line's bytes without itself ([`chain`]). `time` is when the record was written. The
//! fields between belong to the kind:
//! - `request` ([`RequestRecord`]): one per chat request that reached the gateway,
//!   whatever its end: `request_id`, `agent`, `tenant`, `run_id`, `status`
//!   (`completed`, `refused`, `failed`, `cancelled`), `error` (`type`, `message`),
//!   `received_at`, `latency_ms`, `model_requested`, `prompt` and `completion`
//!   (`sha256`, `bytes`, and `text` only with `audit.store_text`), `tool_calls` (each
//!   call a backend proposed, well formed or not: `id`, `name`, `sha256`, `returned`,
//!   `decision`, `reason`), and `report`:
//!   the response's `warden` object whole (route and reasons, backend, model, confidence,
//!   usage, timings with queue wait, cost and its attempts, policy decisions, run usage).
//!   A request that got no answer after trying backends has their `attempts` instead.
//! - `outcome`: a business outcome attached to a run (`run_id`, `agent`, `tenant`,
//!   `outcome`, `status`, `value`), from `POST /v1/outcomes`.
//! - `audit_repaired`: start-up moved a torn tail aside ([`TornTail`]).
//! - `kill_switch`, `config_change`, `approval` (`gateway::operator::OperatorAction`): what an
//!   operator did, `by` whom (the approver; the admin API caller's `x-warden-operator`
//!   header, else `admin`; `signal:SIGHUP`), the `action` and its details.

pub mod chain;
mod head;
pub mod query;
pub mod read;
pub mod record;
pub mod recover;
mod runway;
pub mod segment;
pub mod verify;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

pub use head::HEAD_FILE;
pub use record::{RequestRecord, RequestStatus};
pub use recover::TornTail;

use crate::metrics::AuditMetrics;
use writer::{Committer, Writer, WriterSettings};

/// The kind of the record start-up writes after repairing a torn tail.
pub const REPAIRED_KIND: &str = "audit_repaired";
/// Fields every record has, which an entry's own fields cannot take.
const RESERVED_FIELDS: [&str; 5] = ["seq", "prev", "time", "kind", "hash"];

/// The validated `audit:` section of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// `fdatasync` each group commit before acknowledging (off: the OS decides when).
    pub fsync: bool,
    /// How long the writer waits for more records before a commit (0: it commits what
    /// is queued, which under load is everything that came during the last fsync).
    pub commit_delay: Duration,
    pub max_batch: usize,
    pub segment_bytes: u64,
    /// Keep prompts and completions in clear, not only their hashes and sizes.
    pub store_text: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("audit log {} is damaged at line {line}: {problem}. Run `warden audit verify`; to start anyway, move the log aside", file.display())]
    Damaged {
        file: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("audit log {}: HEAD names record {head} but the log ends at {last}: acknowledged records are missing. Run `warden audit verify`; to start anyway, move the log aside", dir.display())]
    Truncated { dir: PathBuf, head: u64, last: u64 },
    #[error("the audit log stopped accepting records after an error ({0}); restart warden")]
    Broken(String),
    #[error("the audit log is closed")]
    Closed,
    #[error("audit record {seq} is not a readable `{kind}` record: {problem}")]
    Malformed {
        seq: u64,
        kind: String,
        problem: String,
    },
    #[error("not an audit entry: {0}")]
    InvalidEntry(String),
}

impl AuditError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        AuditError::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }
}

/// Where a record landed in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub seq: u64,
    pub hash: String,
}

/// A record to append: its kind and its own fields.
#[derive(Debug, Clone)]
pub struct Entry {
    kind: String,
    /// The fields as a JSON object: serialised once, here, by the request that writes
    /// it, and copied into the line as they are.
    object: String,
}

impl Entry {
    /// `body` must serialise to a JSON object without the fields every record has, and
    /// name each of its members once.
    pub fn new(kind: &str, body: &impl Serialize) -> Result<Self, AuditError> {
        let entry = Self::of_struct(kind, body)?;
        let MemberNames(mut names) = serde_json::from_str(&entry.object)
            .map_err(|_| AuditError::InvalidEntry("its body must be a JSON object".into()))?;
        if let Some(field) = RESERVED_FIELDS
            .iter()
            .find(|f| names.iter().any(|name| name == *f))
        {
            return Err(AuditError::InvalidEntry(format!(
                "`{field}` is a field of every record and cannot be set"
            )));
        }
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            // Readers disagree on which of two equal names counts; the log must not.
            return Err(AuditError::InvalidEntry(format!(
                "`{}` appears twice",
                pair[0]
            )));
        }
        Ok(entry)
    }

    /// For a body whose type is a struct of its own fields (nothing flattened into it):
    /// its serialisation names each member once, and its tests show none is a field
    /// every record has. Reading the names back, as `new` does, costs as much as the
    /// rest of writing a request record.
    pub(crate) fn of_struct(kind: &str, body: &impl Serialize) -> Result<Self, AuditError> {
        let valid_kind = !kind.is_empty()
            && kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_kind {
            return Err(AuditError::InvalidEntry(format!(
                "kind `{kind}` must be lower-case letters, digits and `_`"
            )));
        }
        let object = serde_json::to_string(body)
            .map_err(|error| AuditError::InvalidEntry(error.to_string()))?;
        if !(object.starts_with('{') && object.ends_with('}')) {
            return Err(AuditError::InvalidEntry(
                "its body must be a JSON object".into(),
            ));
        }
        Ok(Self {
            kind: kind.to_string(),
            object,
        })
    }

    /// The body's members, without the braces.
    fn members(&self) -> &str {
        &self.object[1..self.object.len() - 1]
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }
}

/// The names of a JSON object's members, read without building their values.
struct MemberNames(Vec<String>);

impl<'de> Deserialize<'de> for MemberNames {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> Visitor<'de> for Names {
            type Value = MemberNames;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<MemberNames, A::Error> {
                let mut names = Vec::new();
                while let Some((name, IgnoredAny)) = members.next_entry::<String, IgnoredAny>()? {
                    names.push(name);
                }
                Ok(MemberNames(names))
            }
        }
        deserializer.deserialize_map(Names)
    }
}

/// A handle on the log; clones share one committer, whose writer thread stops when the
/// last handle is dropped, after committing what it was given.
#[derive(Clone)]
pub struct AuditLog {
    committer: Arc<Committer>,
    dir: Arc<PathBuf>,
    metrics: AuditMetrics,
}

impl AuditLog {
    /// Recovers the log in `config.dir` (creating it if needed) and starts its writer.
    pub fn open(config: &AuditConfig, metrics: AuditMetrics) -> Result<Self, AuditError> {
        let recovered = recover::recover(&config.dir)?;
        let torn = recovered.torn.clone();
        let settings = WriterSettings {
            fsync: config.fsync,
            commit_delay: config.commit_delay,
            max_batch: config.max_batch,
            segment_bytes: config.segment_bytes,
        };
        let writer = Writer::new(config.dir.clone(), recovered, settings, metrics.clone())?;
        let committer =
            Committer::start(writer).map_err(|source| AuditError::io(&config.dir, source))?;
        let log = Self {
            committer: Arc::new(committer),
            dir: Arc::new(config.dir.clone()),
            metrics,
        };
        if let Some(torn) = torn {
            log.append_detached(Entry::new(REPAIRED_KIND, &torn)?);
        }
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `entry` and returns once it is durable (or the log has failed).
    pub async fn append(&self, entry: Entry) -> Result<Receipt, AuditError> {
        let started = Instant::now();
        let receipt = self.committer.append(entry).await?;
        self.metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(receipt)
    }

    /// Appends a record of `kind` other than a request's (an outcome, an operator's
    /// action): `details` is a JSON object whose fields become the record's.
    pub async fn append_event(
        &self,
        kind: &str,
        details: &impl Serialize,
    ) -> Result<Receipt, AuditError> {
        self.append(Entry::new(kind, details)?).await
    }

    /// Queues `entry` without waiting: for records that must be written from where
    /// nothing can wait (a response dropped by its client).
    pub fn append_detached(&self, entry: Entry) {
        self.committer.append_detached(entry);
    }

    /// Returns once everything appended before is durable: the last record's place.
    pub async fn flush(&self) -> Result<Receipt, AuditError> {
        self.committer.flush().await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use serde_json::json;

    pub(crate) fn config(dir: &Path) -> AuditConfig {
        AuditConfig {
            dir: dir.to_path_buf(),
            fsync: true,
            commit_delay: Duration::ZERO,
            max_batch: 64,
            segment_bytes: 1 << 20,
            store_text: false,
        }
    }

    fn metrics() -> AuditMetrics {
        Metrics::new().unwrap().audit.clone()
    }

    #[tokio::test]
    async fn appends_chain_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&config(dir.path()), metrics()).unwrap();
        let first = log
            .append_event("config_change", &json!({"by": "ops"}))
            .await
            .unwrap();
        let second = log
            .append_event("kill_switch", &json!({"scope": "global"}))
            .await
            .unwrap();
        assert_eq!((first.seq, second.seq), (1, 2));
        drop(log);

        let log = AuditLog::open(&config(dir.path()), metrics()).unwrap();
        let third = log.append_event("approval", &json!({})).await.unwrap();
        assert_eq!(third.seq, 3);
        assert_eq!(log.flush().await.unwrap(), third);
        let verified = verify::verify(dir.path()).unwrap();
        assert_eq!(verified.records, 3);
        assert_eq!(verified.head, Some(third));
    }

    /// Appends `count` records from as many tasks at once; their places, in order.
    async fn append_at_once(log: &AuditLog, count: usize) -> Vec<u64> {
        let appends = (0..count).map(|n| {
            let log = log.clone();
            tokio::spawn(async move { log.append_event("test", &json!({"n": n})).await })
        });
        let mut seqs: Vec<u64> = futures::future::join_all(appends)
            .await
            .into_iter()
            .map(|joined| joined.unwrap().unwrap().seq)
            .collect();
        seqs.sort_unstable();
        seqs
    }

    #[tokio::test]
    async fn concurrent_appends_share_commits_and_stay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&config(dir.path()), metrics()).unwrap();
        assert_eq!(
            append_at_once(&log, 200).await,
            (1..=200).collect::<Vec<_>>()
        );
        assert_eq!(verify::verify(dir.path()).unwrap().records, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_from_many_workers_commit_here_or_queued_and_keep_one_chain() {
        for fsync in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let log = AuditLog::open(
                &AuditConfig {
                    fsync,
                    ..config(dir.path())
                },
                metrics(),
            )
            .unwrap();
            let seqs = append_at_once(&log, 300).await;
            log.append_detached(Entry::new("test", &json!({"n": "detached"})).unwrap());
            assert_eq!(log.flush().await.unwrap().seq, 301);
            assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
            let verified = verify::verify(dir.path()).unwrap();
            assert_eq!(verified.records, 301, "fsync: {fsync}");
        }
    }

    #[tokio::test]
    async fn segments_rotate_and_the_chain_runs_through_them() {
        let dir = tempfile::tempdir().unwrap();
        let small = AuditConfig {
            segment_bytes: 600,
            ..config(dir.path())
        };
        let log = AuditLog::open(&small, metrics()).unwrap();
        for n in 0..20 {
            log.append_event("test", &json!({"n": n, "pad": "x".repeat(100)}))
                .await
                .unwrap();
        }
        let verified = verify::verify(dir.path()).unwrap();
        assert!(verified.segments >= 4, "{verified:?}");
        assert_eq!(verified.records, 20);
        let segments = segment::list(dir.path()).unwrap();
        for closed in &segments[..segments.len() - 1] {
            let bytes = std::fs::read(&closed.path).unwrap();
            assert_eq!(
                segment::written_len(&bytes),
                bytes.len(),
                "a closed segment is plain JSONL"
            );
        }
        drop(log);
        let log = AuditLog::open(&small, metrics()).unwrap();
        assert_eq!(log.append_event("test", &json!({})).await.unwrap().seq, 21);
    }

    #[test]
    fn entries_cannot_forge_chain_fields() {
        assert!(Entry::new("x", &json!({"seq": 1})).is_err());
        assert!(Entry::new("x", &json!({"hash": "0"})).is_err());
        assert!(Entry::new("x", &json!([1])).is_err());
        #[derive(Serialize)]
        struct Twice {
            a: u8,
            #[serde(flatten)]
            more: std::collections::BTreeMap<&'static str, u8>,
        }
        let twice = Twice {
            a: 1,
            more: [("a", 2)].into(),
        };
        assert!(Entry::new("x", &twice).is_err());
        assert!(Entry::new("Bad Kind", &json!({})).is_err());
        assert_eq!(Entry::new("ok_1", &json!({"a": 1})).unwrap().kind(), "ok_1");
    }

    /// The first segment's length on disk, and how much of it is records.
    fn segment_lengths(dir: &Path) -> (u64, usize) {
        let path = segment::Segment::new(dir, 1).path;
        let bytes = std::fs::read(path).unwrap();
        (bytes.len() as u64, segment::written_len(&bytes))
    }

    #[tokio::test]
    async fn an_fsynced_segment_runs_ahead_of_its_records_until_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&config(dir.path()), metrics()).unwrap();
        log.append_event("test", &json!({"n": 1})).await.unwrap();
        // The zeros are written beside the commits, not before the append returns.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (on_disk, written) = segment_lengths(dir.path());
            if on_disk > written as u64 {
                break;
            }
            assert!(Instant::now() < deadline, "the segment was never extended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(query::read_all(dir.path()).unwrap().len(), 1);
        assert_eq!(verify::verify(dir.path()).unwrap().records, 1);
        drop(log);
        let (on_disk, written) = segment_lengths(dir.path());
        assert_eq!(on_disk, written as u64, "a stopped log is plain JSONL");

        // A writer killed before it could trim leaves the zeros: appending goes on over
        // them, and nothing is taken for a torn tail.
        let path = segment::Segment::new(dir.path(), 1).path;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, &[0; 4096]).unwrap();
        let log = AuditLog::open(&config(dir.path()), metrics()).unwrap();
        assert_eq!(
            log.append_event("test", &json!({"n": 2}))
                .await
                .unwrap()
                .seq,
            2
        );
        drop(log);
        assert_eq!(verify::verify(dir.path()).unwrap().records, 2);
        assert_eq!(segment::list(dir.path()).unwrap().len(), 1);
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|entry| !entry
            .unwrap()
            .path()
            .display()
            .to_string()
            .contains("torn")));
    }

    #[tokio::test]
    async fn a_torn_tail_is_repaired_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&config(dir.path()), metrics()).unwrap();
        log.append_event("test", &json!({})).await.unwrap();
        drop(log);
        let segment = segment::Segment::new(dir.path(), 1);
        let mut bytes = std::fs::read(&segment.path).unwrap();
        bytes.extend_from_slice(b"{\"seq\":2,\"prev\":\"0");
        std::fs::write(&segment.path, bytes).unwrap();

        let log = AuditLog::open(&config(dir.path()), metrics()).unwrap();
        let receipt = log.flush().await.unwrap();
        assert_eq!(receipt.seq, 2);
        let records = query::read_all(dir.path()).unwrap();
        assert_eq!(records[1]["kind"], REPAIRED_KIND);
        assert_eq!(records[1]["after_seq"], 1);
        assert_eq!(verify::verify(dir.path()).unwrap().records, 2);
    }
}
