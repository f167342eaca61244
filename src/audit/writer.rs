//! Appending to the log. A commit seals records into the chain, writes them with one
//! `write` and, with `fsync`, makes them durable with one `fdatasync` before any of
//! them is acknowledged.
//!
//! Where the commit runs decides what an append costs. Handing a record to another
//! thread and waiting for its answer takes two thread wake-ups, which on a virtual
//! machine with idle cores cost more than the write itself (~0.3 ms measured here). So
//! the task that made a record commits it whenever that costs only a copy into the page
//! cache (no fsync), or when no other append is under way (with fsync; the task's worker
//! core is handed to another thread while it waits for the disk). With fsync and other
//! appends about, records go to the writer thread, which commits everything queued
//! (waiting up to `commit_delay` for more, at most `max_batch`) with one fsync: then an
//! fsync is shared by as many records as arrived while the previous one ran.
//!
//! With fsync, the segment is extended with zeros ahead of its records ([`runway`]), so
//! most commits overwrite blocks already on disk; the zeros are cut off again when the
//! segment is closed or the log is dropped, and readers stop before them ([`segment`]).
//!
//! An I/O error stops the log for good: after a failed fsync the kernel may have dropped
//! the dirty pages, so a later fsync that succeeds proves nothing. Every append from then
//! on fails (and with it the request, which is never acknowledged unrecorded); a restart
//! re-reads the log and repairs it.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::oneshot;

use super::chain::{seal, Link};
use super::head::HeadWriter;
use super::recover::Recovered;
use super::runway::Runway;
use super::segment::{self, write_at, Segment};
use super::{AuditError, Entry, Receipt};
use crate::metrics::AuditMetrics;

type Reply = oneshot::Sender<Result<Receipt, AuditError>>;

/// What appenders queue for the writer thread: an entry, or `None` to learn when all
/// before it are committed.
struct Job {
    entry: Option<Entry>,
    reply: Option<Reply>,
}

#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub fsync: bool,
    pub commit_delay: Duration,
    pub max_batch: usize,
    pub segment_bytes: u64,
}

/// The appending side of the log, shared by every handle: the writer, the queue to its
/// thread, and how many appends are under way (being committed or queued).
pub struct Committer {
    writer: Arc<Mutex<Writer>>,
    jobs: mpsc::Sender<Job>,
    pending: Arc<AtomicUsize>,
    fsync: bool,
    metrics: AuditMetrics,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    /// Starts the writer thread; dropping the committer stops it and waits until it has
    /// committed everything queued.
    pub fn start(writer: Writer) -> std::io::Result<Self> {
        let (jobs, receiver) = mpsc::channel();
        let fsync = writer.settings.fsync;
        let metrics = writer.metrics.clone();
        let thread = WriterThread {
            gather: Gather {
                commit_delay: writer.settings.commit_delay,
                max_batch: writer.settings.max_batch,
            },
            writer: Arc::new(Mutex::new(writer)),
            pending: Arc::new(AtomicUsize::new(0)),
        };
        let mut committer = Self {
            writer: thread.writer.clone(),
            pending: thread.pending.clone(),
            jobs,
            fsync,
            metrics,
            thread: None,
        };
        committer.thread = Some(
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || thread.run(receiver))?,
        );
        Ok(committer)
    }

    /// Appends `entry`; returns once it is committed (or the log has failed).
    pub async fn append(&self, entry: Entry) -> Result<Receipt, AuditError> {
        let alone = self.pending.fetch_add(1, Ordering::AcqRel) == 0;
        if let Some(result) = self.commit_here(&entry, alone) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return result;
        }
        self.submit(Some(entry)).await
    }

    /// Returns once everything appended before is committed: the last record's place.
    pub async fn flush(&self) -> Result<Receipt, AuditError> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.submit(None).await
    }

    /// Queues `entry` without waiting: for records that must be written from where
    /// nothing can wait (a response dropped by its client).
    pub fn append_detached(&self, entry: Entry) {
        let kind = entry.kind.clone();
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.enqueue(Some(entry), None).is_err() {
            self.metrics.failures.inc();
            tracing::error!(kind, "the audit log is closed; a record was lost");
        }
    }

    /// Commits `entry` on the calling thread when that is cheaper than the writer
    /// thread; `None` when it must be queued. `alone`: no other append was under way.
    fn commit_here(&self, entry: &Entry, alone: bool) -> Option<Result<Receipt, AuditError>> {
        let mut writer = if self.fsync {
            // With other appends about, one queued batch shares an fsync among them all.
            if !alone {
                return None;
            }
            match self.writer.try_lock() {
                Ok(writer) => writer,
                Err(TryLockError::WouldBlock) => return None,
                Err(TryLockError::Poisoned(_)) => return Some(Err(poisoned())),
            }
        } else {
            match lock(&self.writer) {
                Ok(writer) => writer,
                Err(error) => return Some(Err(error)),
            }
        };
        let mut commit = || {
            writer
                .commit(&[Some(entry)])
                .pop()
                .unwrap_or(Err(AuditError::Closed))
        };
        Some(if self.fsync {
            off_core(commit)
        } else {
            commit()
        })
    }

    /// Queues a job for the writer thread, which ends the append it belongs to (counted
    /// in `pending`) once it has answered.
    async fn submit(&self, entry: Option<Entry>) -> Result<Receipt, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(entry, Some(reply))?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    fn enqueue(&self, entry: Option<Entry>, reply: Option<Reply>) -> Result<(), AuditError> {
        self.jobs.send(Job { entry, reply }).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            AuditError::Closed
        })
    }
}

impl Drop for Committer {
    /// Once the last handle is gone the log is finished: every record queued is
    /// committed and the segment trimmed before the files are anyone else's (a log
    /// opened again on the same folder would otherwise race the old writer).
    fn drop(&mut self) {
        // The thread stops when its queue has no sender left.
        drop(std::mem::replace(&mut self.jobs, mpsc::channel().0));
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the audit writer thread panicked");
            }
        }
    }
}

/// Runs `blocking` (an fsync) without stalling the tasks queued behind the caller: on a
/// multi-threaded runtime the caller's worker core moves to another thread meanwhile.
fn off_core<T>(blocking: impl FnOnce() -> T) -> T {
    match Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(blocking),
        _ => blocking(),
    }
}

fn lock(writer: &Mutex<Writer>) -> Result<MutexGuard<'_, Writer>, AuditError> {
    writer.lock().map_err(|_| poisoned())
}

fn poisoned() -> AuditError {
    AuditError::Broken("a commit panicked part-way".into())
}

struct Gather {
    commit_delay: Duration,
    max_batch: usize,
}

/// The thread that commits queued records, a batch at a time.
struct WriterThread {
    writer: Arc<Mutex<Writer>>,
    pending: Arc<AtomicUsize>,
    gather: Gather,
}

impl WriterThread {
    /// Runs until every sender is gone, then returns once all received is committed.
    fn run(self, jobs: Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let batch = self.gather.batch(first, &jobs);
            let entries: Vec<Option<&Entry>> = batch.iter().map(|job| job.entry.as_ref()).collect();
            let results = match lock(&self.writer) {
                Ok(mut writer) => writer.commit(&entries),
                Err(_) => entries.iter().map(|_| Err(poisoned())).collect(),
            };
            self.pending.fetch_sub(batch.len(), Ordering::AcqRel);
            for (job, result) in batch.into_iter().zip(results) {
                if let Some(reply) = job.reply {
                    // An appender that stopped waiting (its client left) needs no answer.
                    let _ = reply.send(result);
                }
            }
        }
    }
}

impl Gather {
    fn batch(&self, first: Job, jobs: &Receiver<Job>) -> Vec<Job> {
        let deadline = Instant::now() + self.commit_delay;
        let mut batch = vec![first];
        while batch.len() < self.max_batch {
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
}

pub struct Writer {
    dir: PathBuf,
    file: Arc<File>,
    segment: Segment,
    /// Where the records end; the file may go on with zeros.
    size: u64,
    /// With fsync: what keeps zeros ahead of the records.
    runway: Option<Runway>,
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
        let io = |source| AuditError::io(&recovered.segment.path, source);
        let file = OpenOptions::new()
            .write(true)
            .open(&recovered.segment.path)
            .map_err(io)?;
        let file = Arc::new(file);
        let runway = if settings.fsync {
            let ready = file.metadata().map_err(io)?.len();
            Some(Runway::start(file.clone(), ready).map_err(io)?)
        } else {
            None
        };
        Ok(Self {
            head: HeadWriter::open(&dir)?,
            dir,
            file,
            segment: recovered.segment,
            size: recovered.size,
            runway,
            last: recovered.last,
            settings,
            broken: None,
            metrics,
        })
    }

    /// Commits `entries` with one write (and one fsync); `None` asks for the place of
    /// the last record committed. Returns each one's outcome, in order.
    fn commit(&mut self, entries: &[Option<&Entry>]) -> Vec<Result<Receipt, AuditError>> {
        let before = (self.size, self.last.clone());
        let mut text = String::new();
        let mut sealed = Vec::with_capacity(entries.len());
        for entry in entries {
            sealed.push(match (entry, &self.broken) {
                (_, Some(reason)) => Err(AuditError::Broken(reason.clone())),
                (None, None) => Ok(None),
                (Some(entry), None) => self.seal(entry, &mut text).map(Some),
            });
        }
        if !text.is_empty() {
            self.metrics.batch_records.observe(entries.len() as f64);
            if let Err(error) = self.write(text.as_bytes()) {
                self.stop(&error, before);
            }
        }
        let barrier = Receipt {
            seq: self.last.seq,
            hash: self.last.hash.clone(),
        };
        let results = entries
            .iter()
            .zip(sealed)
            .map(|(entry, result)| {
                let result = match (&self.broken, result) {
                    (Some(reason), _) => Err(AuditError::Broken(reason.clone())),
                    (None, Ok(Some(receipt))) => Ok(receipt),
                    (None, Ok(None)) => Ok(barrier.clone()),
                    (None, Err(error)) => Err(error),
                };
                match (&result, entry) {
                    (Ok(_), Some(entry)) => {
                        self.metrics.records.with_label_values(&[&entry.kind]).inc()
                    }
                    (Ok(_), None) => {}
                    (Err(_), _) => self.metrics.failures.inc(),
                }
                result
            })
            .collect();
        if self.broken.is_none() && self.size >= self.settings.segment_bytes {
            self.rotate();
        }
        results
    }

    fn seal(&mut self, entry: &Entry, text: &mut String) -> Result<Receipt, AuditError> {
        let mut unsealed = serde_json::to_string(&Header {
            seq: self.last.seq + 1,
            prev: &self.last.hash,
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            kind: &entry.kind,
        })
        .map_err(|error| AuditError::InvalidEntry(error.to_string()))?;
        let members = entry.members();
        if !members.is_empty() {
            unsealed.pop();
            unsealed.push(',');
            unsealed.push_str(members);
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
        let end = self.size + bytes.len() as u64;
        if let Some(runway) = &self.runway {
            runway.before_write(end, self.settings.segment_bytes);
        }
        write_at(&self.file, bytes, self.size).map_err(|source| self.io_error(source))?;
        if self.settings.fsync {
            self.file
                .sync_data()
                .map_err(|source| self.io_error(source))?;
        }
        self.size = end;
        if let Err(error) = self.head.write(&self.last) {
            // The records are durable; only the guard against a cut-off tail lags.
            tracing::warn!(%error, "could not update the audit HEAD file");
        }
        Ok(())
    }

    fn io_error(&self, source: std::io::Error) -> AuditError {
        AuditError::io(&self.segment.path, source)
    }

    /// Cuts the zeros ahead of the records off the segment, so a closed segment is
    /// plain JSONL. Readers skip them anyway: a failure here costs only disk space.
    fn trim(&mut self) {
        let Some(runway) = &self.runway else {
            return;
        };
        runway.settle();
        if let Err(error) = self.file.set_len(self.size) {
            tracing::warn!(%error, segment = %self.segment.path.display(), "could not cut the zeros off the audit segment");
        }
    }

    /// Stops the log after a failed write, cutting the segment back to its last
    /// committed record so a restart finds no half-batch.
    fn stop(&mut self, error: &AuditError, (size, last): (u64, Link)) {
        tracing::error!(%error, "the audit log failed; no further request will be acknowledged until warden restarts");
        if let Some(runway) = &self.runway {
            runway.settle();
        }
        if let Err(cut) = self.file.set_len(size) {
            tracing::error!(error = %cut, "could not cut the audit segment back; start-up will repair it");
        }
        self.last = last;
        self.broken = Some(error.to_string());
    }

    /// Starts the next segment. On failure the current one keeps growing and the next
    /// commit tries again: a large segment is better than a stopped log.
    fn rotate(&mut self) {
        self.trim();
        let next = Segment::new(&self.dir, self.segment.number + 1);
        let opened = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&next.path)
            .map_err(|source| AuditError::io(&next.path, source))
            .and_then(|file| segment::sync_dir(&self.dir).map(|()| file));
        match opened {
            Ok(file) => {
                self.file = Arc::new(file);
                self.segment = next;
                self.size = 0;
            }
            Err(error) => tracing::error!(%error, "could not start a new audit segment"),
        }
        if let Some(runway) = &self.runway {
            runway.switch(self.file.clone(), self.size);
        }
    }
}

impl Drop for Writer {
    /// warden stopping leaves its log as plain JSONL.
    fn drop(&mut self) {
        self.trim();
    }
}
