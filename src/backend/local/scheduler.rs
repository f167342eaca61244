//! Continuous batching. One engine thread owns the key/value cache and runs the model
//! step after step; every step is a single forward pass over all running sequences:
//! one token for each sequence that is decoding, and a slice of the prompt of each one
//! still reading it. A text to embed is a sequence that only reads: its states are
//! pooled as they come out of each pass, and it leaves once its last token is read.
//! Sequences join at any step boundary, as soon as a batch place and cache blocks for
//! their whole length are free, and leave at the step they finish or their client goes
//! away.
//!
//! A generation whose prompt starts with tokens another sequence in the batch has
//! already read (the choices of a request for `n`, agents that share a system prompt)
//! copies their keys and values instead of computing them again; while that other
//! sequence is still reading them, it waits for them rather than read them alongside.
//!
//! Requests wait while the batch or the cache is full, in the governor's order (their
//! `ranks_at`: arrival plus one aging period per class above P0), so a P0 request
//! waiting for cache room goes before a P2 one that came first, as it did in the
//! governor's queue. The caller bounds the wait (`LocalBackend`'s queue timeout), the
//! scheduler never refuses one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::embedding::{Pooled, Pooling, VectorSender};
use super::engine::{Engine, PreparedPrompt};
use super::generation::{Generation, Next};
use super::llama::kv_cache::{BlockTable, KvCache, BLOCK_TOKENS};
use super::llama::{Output, SequenceInput, Workspace};
use super::network::{Network, SequenceModel};
use crate::backend::BackendError;
use crate::chat::{ChatRequest, GenerationEvent};

/// Prompt tokens read per step across all sequences: a long prompt joining a running
/// batch delays the others' next token by one such slice, not by the whole prompt.
pub const PREFILL_TOKENS_PER_STEP: usize = 256;

/// How long the engine thread sleeps when every running sequence waits for a slow
/// client to read its events.
const STALLED_POLL: Duration = Duration::from_millis(2);

pub type EventSender = mpsc::Sender<Result<GenerationEvent, BackendError>>;

/// A request handed to the engine thread.
pub struct Submission {
    pub task: Task,
    pub arrived: Instant,
    /// Its place in line: earlier goes first.
    pub ranks_at: Instant,
    /// How long it may run once admitted, prompt and answer.
    pub max_generation: Duration,
    /// Answered once the sequence has joined the batch (or can never join).
    pub admitted: oneshot::Sender<Result<(), BackendError>>,
}

/// What a submission asks of the model.
pub enum Task {
    /// An answer to `prompt`, sampled token by token and sent as events. Boxed: a
    /// request and its prompt's grammar are far larger than a text to embed.
    Generate {
        request: Box<ChatRequest>,
        prompt: Box<PreparedPrompt>,
        events: EventSender,
    },
    /// One vector for the text `tokens`.
    Embed {
        tokens: Vec<u32>,
        pooling: Pooling,
        vector: VectorSender,
    },
}

impl Task {
    fn prompt_tokens(&self) -> usize {
        match self {
            Task::Generate { prompt, .. } => prompt.tokens.len(),
            Task::Embed { tokens, .. } => tokens.len(),
        }
    }

    /// Cache positions it needs: its prompt and the longest answer it may write.
    fn length(&self) -> usize {
        match self {
            Task::Generate { prompt, .. } => prompt.tokens.len() + prompt.max_tokens,
            Task::Embed { tokens, .. } => tokens.len(),
        }
    }
}

/// What the engine thread reports for callers and the governor to read.
#[derive(Debug, Default)]
pub struct Occupancy {
    running: AtomicUsize,
    waiting: AtomicUsize,
    cache_tokens: AtomicUsize,
    free_tokens: AtomicUsize,
    /// Prompt tokens read several at a time (prefill), since the start.
    prefilled_tokens: AtomicU64,
    /// Tokens read one at a time (decode, and a prompt's lone last token), since the
    /// start.
    decoded_tokens: AtomicU64,
}

/// A snapshot of the engine's load and room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Capacity {
    /// Sequences that may decode together.
    pub max_sequences: usize,
    /// Sequences in the batch now.
    pub running: usize,
    /// Requests waiting for a place or for cache blocks.
    pub waiting: usize,
    /// Positions the key/value cache holds in all.
    pub cache_tokens: usize,
    /// Positions not reserved by any sequence.
    pub free_cache_tokens: usize,
}

impl Occupancy {
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Positions the key/value cache holds in all; 0 until the engine is ready.
    pub fn cache_tokens(&self) -> usize {
        self.cache_tokens.load(Ordering::Relaxed)
    }

    pub fn free_tokens(&self) -> usize {
        self.free_tokens.load(Ordering::Relaxed)
    }

    pub fn prefilled_tokens(&self) -> u64 {
        self.prefilled_tokens.load(Ordering::Relaxed)
    }

    pub fn decoded_tokens(&self) -> u64 {
        self.decoded_tokens.load(Ordering::Relaxed)
    }

    /// Counts the tokens of one forward pass that went through.
    fn count(&self, plan: &[(usize, usize)]) {
        let (mut prefilled, mut decoded) = (0, 0);
        for &(_, take) in plan {
            if take == 1 {
                decoded += 1;
            } else {
                prefilled += take as u64;
            }
        }
        self.prefilled_tokens
            .fetch_add(prefilled, Ordering::Relaxed);
        self.decoded_tokens.fetch_add(decoded, Ordering::Relaxed);
    }
}

/// One sequence in the batch.
struct Sequence {
    work: SequenceWork,
    /// When it is stopped however far it got.
    deadline: Instant,
    max_generation: Duration,
    /// The prompt, then each sampled token as it is fed back.
    tokens: Vec<u32>,
    /// Positions already in the cache.
    cached: usize,
    table: BlockTable,
    /// Its own model copy when the network runs one sequence per pass.
    model: Option<SequenceModel>,
}

/// What a sequence in the batch is doing, and where its results go.
enum SequenceWork {
    Generation {
        /// `None` once it has finished. Boxed: its sampler state is far larger than
        /// an embedding's.
        generation: Option<Box<Generation>>,
        events: EventSender,
        outbox: VecDeque<GenerationEvent>,
    },
    /// `None` once its vector is sent.
    Embedding(Option<(Pooled, VectorSender)>),
}

impl Sequence {
    fn done(&self) -> bool {
        match &self.work {
            SequenceWork::Generation { generation, .. } => generation.is_none(),
            SequenceWork::Embedding(pooled) => pooled.is_none(),
        }
    }

    /// Whether it waits for its client to read what it has written so far.
    fn waits_for_reader(&self) -> bool {
        match &self.work {
            SequenceWork::Generation { outbox, .. } => !outbox.is_empty(),
            SequenceWork::Embedding(_) => false,
        }
    }

    /// Whether it may leave the batch: finished with everything delivered.
    fn delivered(&self) -> bool {
        self.done() && !self.waits_for_reader()
    }

    /// Ends it early with `error`, dropping what its client has not read.
    fn end_with(&mut self, error: BackendError) {
        match &mut self.work {
            SequenceWork::Generation {
                generation,
                events,
                outbox,
            } => {
                *generation = None;
                outbox.clear();
                let _ = events.try_send(Err(error));
            }
            SequenceWork::Embedding(pooled) => {
                if let Some((_, vector)) = pooled.take() {
                    let _ = vector.send(Err(error));
                }
            }
        }
    }

    /// Tokens still to run through the model.
    fn pending(&self) -> &[u32] {
        &self.tokens[self.cached..]
    }

    /// The prompt tokens a generation still reading its prompt could take from another
    /// sequence's cache: all but the last, which it reads itself, since its first token
    /// is drawn from that pass. `None` for a sequence that can take none: one past its
    /// prompt, or a text to embed (every position's state goes into its vector).
    fn reusable_prompt(&self) -> Option<&[u32]> {
        let reading =
            matches!(self.work, SequenceWork::Generation { .. }) && self.pending().len() > 1;
        reading.then(|| &self.tokens[..self.tokens.len() - 1])
    }

    /// Hands queued events to the client's channel. `false` once nobody listens.
    fn flush(&mut self) -> bool {
        let (events, outbox) = match &mut self.work {
            SequenceWork::Generation { events, outbox, .. } => (events, outbox),
            SequenceWork::Embedding(pooled) => {
                return pooled
                    .as_ref()
                    .is_none_or(|(_, vector)| !vector.is_closed())
            }
        };
        while let Some(event) = outbox.pop_front() {
            match events.try_send(Ok(event)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(Ok(event))) => {
                    outbox.push_front(event);
                    return true;
                }
                Err(_) => return false,
            }
        }
        !events.is_closed()
    }
}

pub struct Scheduler {
    engine: Arc<Engine>,
    cache: KvCache,
    work: Workspace,
    /// Logits of a per-sequence network's pass, gathered in plan order.
    gathered: Vec<f32>,
    max_sequences: usize,
    running: Vec<Sequence>,
    waiting: Waiting,
    occupancy: Arc<Occupancy>,
}

/// Requests not yet in the batch, by their place in line, then by arrival here.
#[derive(Default)]
struct Waiting {
    submissions: BTreeMap<PlaceInLine, Submission>,
    arrivals: u64,
}

/// `ranks_at`, then the order of arrival at the engine.
type PlaceInLine = (Instant, u64);

impl Waiting {
    fn push(&mut self, submission: Submission) {
        self.arrivals += 1;
        self.submissions
            .insert((submission.ranks_at, self.arrivals), submission);
    }

    fn pop_first(&mut self) -> Option<(PlaceInLine, Submission)> {
        self.submissions.pop_first()
    }

    /// Puts a request taken out by `pop_first` back where it stood.
    fn put_back(&mut self, place: PlaceInLine, submission: Submission) {
        self.submissions.insert(place, submission);
    }

    fn len(&self) -> usize {
        self.submissions.len()
    }

    fn is_empty(&self) -> bool {
        self.submissions.is_empty()
    }
}

impl Scheduler {
    pub fn new(
        engine: Arc<Engine>,
        cache: KvCache,
        max_sequences: usize,
        occupancy: Arc<Occupancy>,
    ) -> Self {
        occupancy
            .cache_tokens
            .store(cache.capacity_tokens(), Ordering::Relaxed);
        occupancy
            .free_tokens
            .store(cache.free_tokens(), Ordering::Relaxed);
        Self {
            engine,
            cache,
            work: Workspace::default(),
            gathered: Vec::new(),
            max_sequences,
            running: Vec::new(),
            waiting: Waiting::default(),
            occupancy,
        }
    }

    /// Serves submissions until every sender is gone and the last sequence has ended.
    pub fn run(mut self, submissions: Receiver<Submission>) {
        let mut open = true;
        while open || !self.running.is_empty() || !self.waiting.is_empty() {
            if self.running.is_empty() && self.waiting.is_empty() {
                match submissions.recv() {
                    Ok(submission) => self.waiting.push(submission),
                    Err(_) => open = false,
                }
            }
            loop {
                match submissions.try_recv() {
                    Ok(submission) => self.waiting.push(submission),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.retire();
            self.stop_overdue();
            self.admit();
            // Those just admitted take what the batch has read.
            self.reuse_read_prompts();
            self.publish();
            if !self.step() {
                // Nothing could run: every sequence waits for its reader. Sleep on the
                // queue instead of spinning, waking early for a new request.
                match submissions.recv_timeout(STALLED_POLL) {
                    Ok(submission) => self.waiting.push(submission),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        open = false;
                        std::thread::sleep(STALLED_POLL);
                    }
                }
            }
        }
    }

    /// Drops sequences whose client left and finished ones whose events are delivered.
    fn retire(&mut self) {
        let cache = &mut self.cache;
        self.running.retain_mut(|sequence| {
            let listening = sequence.flush();
            let keep = listening && !sequence.delivered();
            if !keep {
                cache.release(std::mem::take(&mut sequence.table));
            }
            keep
        });
    }

    /// Stops the sequences past their deadline: one that has answered something ends
    /// there (`FinishReason::Deadline`), one still reading its prompt (or its text to
    /// embed) ends with an error. Either way its place and cache blocks go to the
    /// others.
    fn stop_overdue(&mut self) {
        let now = Instant::now();
        for sequence in &mut self.running {
            if now < sequence.deadline || sequence.done() {
                continue;
            }
            if let SequenceWork::Generation {
                generation, outbox, ..
            } = &mut sequence.work
            {
                if let Some(generation) = generation.take_if(|g| g.has_answered()) {
                    generation.stop_at_deadline(&self.engine, outbox);
                    continue;
                }
            }
            sequence.end_with(BackendError::DeadlineExceeded {
                limit: sequence.max_generation,
            });
        }
    }

    /// Moves waiting requests into the batch, first in line first, while there is
    /// room. The first waits for cache room rather than let later ones, smaller, pass
    /// it: otherwise a stream of short P2 requests could keep a long P0 one out.
    fn admit(&mut self) {
        while self.running.len() < self.max_sequences {
            let Some((place, submission)) = self.waiting.pop_first() else {
                break;
            };
            if submission.admitted.is_closed() {
                continue; // its caller stopped waiting
            }
            let length = submission.task.length();
            let Some(table) = self.cache.allocate(length) else {
                if length > self.cache.capacity_tokens() {
                    let _ = submission
                        .admitted
                        .send(Err(BackendError::ContextLengthExceeded {
                            prompt_tokens: submission.task.prompt_tokens(),
                            context_length: self.cache.capacity_tokens(),
                        }));
                    continue;
                }
                self.waiting.put_back(place, submission);
                break;
            };
            let queue_ms = submission.arrived.elapsed().as_secs_f64() * 1000.0;
            if submission.admitted.send(Ok(())).is_err() {
                self.cache.release(table);
                continue;
            }
            let (tokens, work) = match submission.task {
                Task::Generate {
                    request,
                    mut prompt,
                    events,
                } => {
                    let generation = Box::new(Generation::new(
                        &request,
                        &mut prompt,
                        submission.arrived,
                        queue_ms,
                    ));
                    let work = SequenceWork::Generation {
                        generation: Some(generation),
                        events,
                        outbox: VecDeque::new(),
                    };
                    (prompt.tokens, work)
                }
                Task::Embed {
                    tokens,
                    pooling,
                    vector,
                } => {
                    let width = self.engine.network().config().hidden;
                    let pooled = Pooled::new(pooling, width);
                    (tokens, SequenceWork::Embedding(Some((pooled, vector))))
                }
            };
            self.running.push(Sequence {
                work,
                deadline: Instant::now() + submission.max_generation,
                max_generation: submission.max_generation,
                tokens,
                cached: 0,
                table,
                model: self.engine.network().new_sequence(),
            });
        }
    }

    fn publish(&self) {
        self.occupancy
            .running
            .store(self.running.len(), Ordering::Relaxed);
        self.occupancy
            .waiting
            .store(self.waiting.len(), Ordering::Relaxed);
        self.occupancy
            .free_tokens
            .store(self.cache.free_tokens(), Ordering::Relaxed);
    }

    /// Copies into each generation still reading its prompt the longest part of it
    /// another sequence in the batch has already read: the same tokens give the same
    /// keys and values. Only warden's own network keeps its cache in the shared pool.
    fn reuse_read_prompts(&mut self) {
        if !matches!(self.engine.network(), Network::Own(_)) {
            return;
        }
        for reader in 0..self.running.len() {
            let Some((source, shared)) = self.read_elsewhere(reader) else {
                continue;
            };
            let sequence = &self.running[reader];
            let blocks = sequence.cached / BLOCK_TOKENS..shared.div_ceil(BLOCK_TOKENS);
            // Whole blocks: positions past `shared` in the last one are the source's
            // own, and this sequence computes and stores its own there before any
            // pass reads them.
            let from = self.running[source].table[blocks.clone()].to_vec();
            self.cache.copy_blocks(&from, &sequence.table[blocks]);
            let sequence = &mut self.running[reader];
            if let SequenceWork::Generation {
                generation: Some(generation),
                ..
            } = &mut sequence.work
            {
                generation.reused_prompt(shared - sequence.cached);
            }
            sequence.cached = shared;
        }
    }

    /// The sequence whose cache holds the longest part of `reader`'s reusable prompt
    /// beyond what `reader` has read, and that part's length.
    fn read_elsewhere(&self, reader: usize) -> Option<(usize, usize)> {
        let sequence = &self.running[reader];
        let wanted = sequence.reusable_prompt()?;
        self.running
            .iter()
            .enumerate()
            .filter(|&(index, _)| index != reader)
            .map(|(index, source)| {
                (
                    index,
                    common_prefix(&source.tokens[..source.cached], wanted),
                )
            })
            .filter(|&(_, shared)| shared > sequence.cached)
            .max_by_key(|&(_, shared)| shared)
    }

    /// Whether `reader` should wait while a sequence that joined the batch before it
    /// reads prompt tokens they share, to copy them once read.
    fn awaits_shared_prompt(&self, reader: usize) -> bool {
        let sequence = &self.running[reader];
        let Some(wanted) = sequence.reusable_prompt() else {
            return false;
        };
        self.running[..reader].iter().any(|earlier| {
            let shared = common_prefix(&earlier.tokens, wanted);
            shared > sequence.cached && earlier.cached < shared && !earlier.done()
        })
    }

    /// One forward pass over every sequence that can advance. `false` if none could.
    fn step(&mut self) -> bool {
        let own = matches!(self.engine.network(), Network::Own(_));
        // Which sequences take part, and how many of their tokens.
        let mut budget = PREFILL_TOKENS_PER_STEP;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for (index, sequence) in self.running.iter().enumerate() {
            // A sequence whose reader is behind sits this step out, as does one whose
            // prompt another is reading for it.
            if sequence.done()
                || sequence.waits_for_reader()
                || (own && self.awaits_shared_prompt(index))
            {
                continue;
            }
            let pending = sequence.pending().len();
            let take = if pending == 1 { 1 } else { pending.min(budget) };
            if take == 0 {
                continue;
            }
            if pending > 1 {
                budget -= take;
            }
            plan.push((index, take));
        }
        if plan.is_empty() {
            return false;
        }
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.forward(&plan)));
        match outcome {
            Ok(Ok(())) => {
                self.occupancy.count(&plan);
                // Now, before a sequence that just finished leaves and takes its cache
                // with it.
                self.reuse_read_prompts();
            }
            Ok(Err(error)) => self.fail(&plan, &error),
            Err(_) => self.fail(&plan, "the engine panicked"),
        }
        true
    }

    fn forward(&mut self, plan: &[(usize, usize)]) -> Result<(), String> {
        let (logits, hidden): (&[f32], &[f32]) = match self.engine.network() {
            Network::Own(model) => {
                let inputs: Vec<SequenceInput> = plan
                    .iter()
                    .map(|&(index, take)| {
                        let sequence = &self.running[index];
                        let output = match sequence.work {
                            SequenceWork::Embedding(_) => Output::Hidden,
                            SequenceWork::Generation { .. } if take == sequence.pending().len() => {
                                Output::Logits
                            }
                            SequenceWork::Generation { .. } => Output::Nothing,
                        };
                        SequenceInput {
                            tokens: &sequence.pending()[..take],
                            position: sequence.cached,
                            table: &sequence.table,
                            output,
                        }
                    })
                    .collect();
                let outputs = model
                    .forward(&inputs, &mut self.cache, &mut self.work)
                    .map_err(|e| e.to_string())?;
                (outputs.logits, outputs.hidden)
            }
            Network::Candle { .. } => {
                self.gathered.clear();
                for &(index, take) in plan {
                    let sequence = &mut self.running[index];
                    if let SequenceWork::Embedding(_) = sequence.work {
                        // `LocalBackend::embed` sends none to this network.
                        return Err("candle's forward pass gives no hidden states".into());
                    }
                    let wants_logits = take == sequence.pending().len();
                    let (position, tokens) = (sequence.cached, &sequence.tokens);
                    let model = sequence
                        .model
                        .as_mut()
                        .ok_or("a sequence without its model copy")?;
                    model
                        .forward(
                            &tokens[position..position + take],
                            position,
                            wants_logits,
                            &mut self.gathered,
                        )
                        .map_err(|e| e.to_string())?;
                }
                (&self.gathered, &[])
            }
        };
        let config = self.engine.network().config();
        let mut rows = logits.chunks_exact(config.vocab);
        let mut states = hidden;
        for &(index, take) in plan {
            let sequence = &mut self.running[index];
            sequence.cached += take;
            let read_all = sequence.cached == sequence.tokens.len();
            match &mut sequence.work {
                SequenceWork::Embedding(pooled) => {
                    let (these, rest) = states.split_at(take * config.hidden);
                    states = rest;
                    if let Some((pool, _)) = pooled.as_mut() {
                        pool.add(these);
                    }
                    if read_all {
                        if let Some((pool, vector)) = pooled.take() {
                            let _ = vector.send(Ok(pool.finish()));
                        }
                    }
                }
                SequenceWork::Generation { .. } if !read_all => {} // more prompt to read
                SequenceWork::Generation {
                    generation: slot,
                    outbox,
                    ..
                } => {
                    let (Some(generation), Some(logits)) = (slot.as_mut(), rows.next()) else {
                        continue;
                    };
                    match generation.accept(&self.engine, logits, outbox) {
                        Next::Token(token) => sequence.tokens.push(token),
                        Next::Finished => {
                            if let Some(generation) = slot.take() {
                                generation.finish(&self.engine, outbox);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends the sequences of a failed pass with an error; the others carry on.
    fn fail(&mut self, plan: &[(usize, usize)], error: &str) {
        tracing::error!(%error, "local generation failed");
        for &(index, _) in plan {
            self.running[index].end_with(BackendError::Generation(error.to_string()));
        }
    }
}

/// How many tokens `a` and `b` start with in common.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
