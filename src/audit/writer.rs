//! The one thread that appends to the log, by group commit: it takes every entry queued
//! (waiting up to `commit_delay` for more, at most `max_batch`), seals them into the
//! chain, writes them with one `write`, makes them durable with one `fdatasync`, and only
//! then answers each appender. Under load an fsync is shared by as many records as
//! arrived while the previous one ran.
//!
//! An I/O error stops the log for good: after a failed fsync the kernel may have dropped
//! the dirty pages, so a later fsync that succeeds proves nothing. Every append from then
//! on fails (and with it the request, which is never acknowledged unrecorded); a restart
//! re-reads the log and repairs it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use tokio::sync::oneshot;

use super::chain::{seal, Link};
use super::head::HeadWriter;
use super::recover::Recovered;
use super::segment::{self, Segment};
use super::{AuditError, Entry, Receipt};
use crate::metrics::AuditMetrics;

pub type Reply = oneshot::Sender<Result<Receipt, AuditError>>;

/// What appenders send: an entry, or `None` to learn when all before it are durable.
pub struct Job {
    pub entry: Option<Entry>,
    pub reply: Option<Reply>,
}

#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub fsync: bool,
    pub commit_delay: Duration,
    pub max_batch: usize,
    pub segment_bytes: u64,
}

pub struct Writer {
    dir: PathBuf,
    file: File,
    segment: Segment,
    size: u64,
    last: Link,
    head: HeadWriter,
    settings: WriterSettings,
    broken: Option<String>,
    metrics: AuditMetrics,
}

/// The fields every record starts with; the entry's own follow them.
#[derive(Serialize)]
struct Header<'a> {
    seq: u64,
    prev: &'a str,
    time: String,
    kind: &'a str,
}

impl Writer {
    pub fn new(
        dir: PathBuf,
        recovered: Recovered,
        settings: WriterSettings,
        metrics: AuditMetrics,
    ) -> Result<Self, AuditError> {
        let file = OpenOptions::new()
            .append(true)
            .open(&recovered.segment.path)
            .map_err(|source| AuditError::io(&recovered.segment.path, source))?;
        Ok(Self {
            head: HeadWriter::open(&dir)?,
            dir,
            file,
            segment: recovered.segment,
            size: recovered.size,
            last: recovered.last,
            settings,
            broken: None,
            metrics,
        })
    }

    /// Runs until every sender is gone, then returns once all received is committed.
    pub fn run(mut self, jobs: Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let batch = self.gather(first, &jobs);
            self.commit(batch);
        }
    }

    fn gather(&self, first: Job, jobs: &Receiver<Job>) -> Vec<Job> {
        let deadline = Instant::now() + self.settings.commit_delay;
        let mut batch = vec![first];
        while batch.len() < self.settings.max_batch {
            let next = match jobs.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        None
                    } else {
                        // Timed out or every sender gone: commit what there is.
                        jobs.recv_timeout(left).ok()
                    }
                }
            };
            match next {
                Some(job) => batch.push(job),
                None => break,
            }
        }
        batch
    }

    fn commit(&mut self, batch: Vec<Job>) {
        let before = (self.size, self.last.clone());
        let mut text = String::new();
        let mut sealed = Vec::with_capacity(batch.len());
        for job in batch {
            let result = match (&job.entry, &self.broken) {
                (_, Some(reason)) => Err(AuditError::Broken(reason.clone())),
                (None, None) => Ok(None),
                (Some(entry), None) => self.seal(entry, &mut text).map(Some),
            };
            sealed.push((job, result));
        }
        if !text.is_empty() {
            self.metrics.batch_records.observe(sealed.len() as f64);
            if let Err(error) = self.write(text.as_bytes()) {
                self.stop(&error, before);
            }
        }
        let barrier = Receipt {
            seq: self.last.seq,
            hash: self.last.hash.clone(),
        };
        for (job, result) in sealed {
            let result = match (&self.broken, result) {
                (Some(reason), _) => Err(AuditError::Broken(reason.clone())),
                (None, Ok(Some(receipt))) => Ok(receipt),
                (None, Ok(None)) => Ok(barrier.clone()),
                (None, Err(error)) => Err(error),
            };
            match (&result, &job.entry) {
                (Ok(_), Some(entry)) => {
                    self.metrics.records.with_label_values(&[&entry.kind]).inc()
                }
                (Ok(_), None) => {}
                (Err(_), _) => self.metrics.failures.inc(),
            }
            if let Some(reply) = job.reply {
                // An appender that stopped waiting (its client left) needs no answer.
                let _ = reply.send(result);
            }
        }
        if self.broken.is_none() && self.size >= self.settings.segment_bytes {
            self.rotate();
        }
    }

    fn seal(&mut self, entry: &Entry, text: &mut String) -> Result<Receipt, AuditError> {
        let mut unsealed = serde_json::to_string(&Header {
            seq: self.last.seq + 1,
            prev: &self.last.hash,
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            kind: &entry.kind,
        })
        .map_err(|error| AuditError::InvalidEntry(error.to_string()))?;
        if !entry.members.is_empty() {
            unsealed.pop();
            unsealed.push(',');
            unsealed.push_str(&entry.members);
            unsealed.push('}');
        }
        let (line, hash) = seal(unsealed);
        text.push_str(&line);
        text.push('\n');
        self.last = Link {
            seq: self.last.seq + 1,
            hash: hash.clone(),
        };
        Ok(Receipt {
            seq: self.last.seq,
            hash,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), AuditError> {
        let io = |source| AuditError::io(&self.segment.path, source);
        self.file.write_all(bytes).map_err(io)?;
        if self.settings.fsync {
            self.file.sync_data().map_err(io)?;
        }
        self.size += bytes.len() as u64;
        if let Err(error) = self.head.write(&self.last) {
            // The records are durable; only the guard against a cut-off tail lags.
            tracing::warn!(%error, "could not update the audit HEAD file");
        }
        Ok(())
    }

    /// Stops the log after a failed write, cutting the segment back to its last
    /// committed record so a restart finds no half-batch.
    fn stop(&mut self, error: &AuditError, (size, last): (u64, Link)) {
        tracing::error!(%error, "the audit log failed; no further request will be acknowledged until warden restarts");
        if let Err(cut) = self.file.set_len(size) {
            tracing::error!(error = %cut, "could not cut the audit segment back; start-up will repair it");
        }
        self.last = last;
        self.broken = Some(error.to_string());
    }

    /// Starts the next segment. On failure the current one keeps growing and the next
    /// commit tries again: a large segment is better than a stopped log.
    fn rotate(&mut self) {
        let next = Segment::new(&self.dir, self.segment.number + 1);
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&next.path)
            .map_err(|source| AuditError::io(&next.path, source))
            .and_then(|file| segment::sync_dir(&self.dir).map(|()| file));
        match opened {
            Ok(file) => {
                self.file = file;
                self.segment = next;
                self.size = 0;
            }
            Err(error) => tracing::error!(%error, "could not start a new audit segment"),
        }
    }
}
