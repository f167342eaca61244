//! One request's generation, driven a token at a time by the scheduler: the grammar's
//! mask, sampling, stop sequences, held-back tool calls, log-probabilities, and the
//! summary at the end. The model's forward pass is not here; the scheduler batches it
//! and hands each sequence its logits.

use std::collections::VecDeque;
use std::time::Instant;

use super::constraint::Constraint;
use super::engine::{Engine, PreparedPrompt};
use super::output::OutputGate;
use super::sampler::Sampler;
use super::token_text::Utf8Stream;
use super::tool_parse;
use crate::chat::{
    ChatRequest, Confidence, FinishReason, GenerationEvent, GenerationSummary, MalformedToolCall,
    Timings, TokenLogprob, ToolCall, ToolSpec, Usage,
};

/// The last tokens of a constrained answer go to closing it (`Constraint::restrict`):
/// enough for a string, its object and a call's closing tag.
const WIND_DOWN_TOKENS: usize = 12;

/// What the sequence needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Feed this token back through the model and bring its logits.
    Token(u32),
    /// The generation is over; `finish` gives its last events.
    Finished,
}

pub struct Generation {
    tools: Vec<ToolSpec>,
    /// `tool_choice` demands a call: an answer without a whole one is withheld.
    call_required: bool,
    logprobs: bool,
    max_tokens: usize,
    prompt_tokens: usize,
    /// Of the prompt's tokens, those copied from another sequence's cache.
    reused_prompt_tokens: usize,
    sampler: Sampler,
    constraint: Option<Constraint>,
    gate: OutputGate,
    utf8: Utf8Stream,
    pending_logprobs: Vec<TokenLogprob>,
    sampled_logprobs: Vec<f32>,
    finish_reason: FinishReason,
    arrived: Instant,
    queue_ms: f64,
    prefill_started: Instant,
    prefill_ms: Option<f64>,
    decode_started: Instant,
    first_token_ms: Option<f64>,
}

impl Generation {
    /// A generation admitted now, `queue_ms` after it `arrived`; it takes the prompt's
    /// grammar.
    pub fn new(
        request: &ChatRequest,
        prompt: &mut PreparedPrompt,
        arrived: Instant,
        queue_ms: f64,
    ) -> Self {
        let tools = request.callable_tools().to_vec();
        let call_required = request.demands_call();
        let gate = OutputGate::new(request.sampling.stop.clone(), !tools.is_empty());
        let now = Instant::now();
        Self {
            gate: if call_required {
                gate.holding_everything()
            } else {
                gate
            },
            call_required,
            constraint: prompt.constraint.take(),
            tools,
            logprobs: request.logprobs.is_some(),
            max_tokens: prompt.max_tokens,
            prompt_tokens: prompt.tokens.len(),
            reused_prompt_tokens: 0,
            sampler: Sampler::new(
                &request.sampling,
                prompt.sampling_defaults,
                usize::from(request.logprobs.unwrap_or(0)),
            ),
            utf8: Utf8Stream::default(),
            pending_logprobs: Vec::new(),
            sampled_logprobs: Vec::new(),
            finish_reason: FinishReason::Length,
            arrived,
            queue_ms,
            prefill_started: now,
            prefill_ms: None,
            decode_started: now,
            first_token_ms: None,
        }
    }

    /// Counts `tokens` of the prompt as taken from another sequence's cache rather than
    /// read.
    pub fn reused_prompt(&mut self, tokens: usize) {
        self.reused_prompt_tokens += tokens;
    }

    /// Takes the logits that follow the sequence so far; releasable text goes to `out`.
    pub fn accept(
        &mut self,
        engine: &Engine,
        logits: &[f32],
        out: &mut VecDeque<GenerationEvent>,
    ) -> Next {
        if self.prefill_ms.is_none() {
            self.prefill_ms = Some(ms_since(self.prefill_started));
            self.decode_started = Instant::now();
        }
        if self.sampled_logprobs.len() >= self.max_tokens {
            return Next::Finished;
        }
        let sampled = match &mut self.constraint {
            Some(constraint) => {
                let mut allowed = logits.to_vec();
                let left = self.max_tokens - self.sampled_logprobs.len();
                let winding_down = left <= (self.max_tokens / 4).min(WIND_DOWN_TOKENS);
                if let Err(error) = constraint.restrict(&mut allowed, winding_down) {
                    return self.grammar_failed(&error);
                }
                self.sampler.sample(&allowed)
            }
            None => self.sampler.sample(logits),
        };
        self.first_token_ms
            .get_or_insert_with(|| ms_since(self.arrived));
        if engine.is_control(sampled.token) {
            self.finish_reason = FinishReason::Stop;
            return Next::Finished;
        }
        if let Some(constraint) = &mut self.constraint {
            if let Err(error) = constraint.advance(sampled.token) {
                return self.grammar_failed(&error);
            }
        }
        self.sampled_logprobs.push(sampled.logprob);
        if self.logprobs {
            self.pending_logprobs.push(engine.token_logprob(
                sampled.token,
                sampled.logprob,
                &sampled.top,
            ));
        }
        let released = self
            .gate
            .push(&self.utf8.push(engine.token_bytes(sampled.token)));
        if !released.is_empty() {
            out.push_back(GenerationEvent::Content {
                text: released,
                logprobs: std::mem::take(&mut self.pending_logprobs),
            });
        }
        let grammar_complete = self
            .constraint
            .as_ref()
            .is_some_and(Constraint::is_complete);
        if self.gate.stopped() || grammar_complete {
            self.finish_reason = FinishReason::Stop;
            return Next::Finished;
        }
        if self.sampled_logprobs.len() == self.max_tokens {
            return Next::Finished;
        }
        Next::Token(sampled.token)
    }

    /// The grammar allowed nothing (it should not happen): the answer ends here, and
    /// whatever call it holds is read, or withheld, as usual.
    fn grammar_failed(&mut self, error: &str) -> Next {
        tracing::warn!(%error, "the grammar could not go on");
        self.finish_reason = FinishReason::Stop;
        Next::Finished
    }

    /// Whether any token of the answer has been sampled yet.
    pub fn has_answered(&self) -> bool {
        !self.sampled_logprobs.is_empty()
    }

    /// Ends the generation where it is, at the server's deadline.
    pub fn stop_at_deadline(mut self, engine: &Engine, out: &mut VecDeque<GenerationEvent>) {
        self.finish_reason = FinishReason::Deadline;
        self.finish(engine, out);
    }

    /// The held-back text, any tool calls, and the summary.
    pub fn finish(mut self, engine: &Engine, out: &mut VecDeque<GenerationEvent>) {
        let tail = self.gate.push(&self.utf8.finish());
        let (_, held) = self.gate.finish();
        let mut parsed = tool_parse::parse(&held, &self.tools);
        if self.call_required && parsed.tool_calls.is_empty() {
            // Cut short before its call was whole (`max_tokens`): nothing of it is text.
            parsed.content.clear();
            parsed.malformed = true;
        }
        if parsed.malformed {
            tracing::debug!(output = %held, "withheld a malformed tool call");
        }
        let text = format!("{tail}{}", parsed.content);
        if !text.is_empty() || !self.pending_logprobs.is_empty() {
            out.push_back(GenerationEvent::Content {
                text,
                logprobs: self.pending_logprobs,
            });
        }
        if !parsed.tool_calls.is_empty() {
            self.finish_reason = FinishReason::ToolCalls;
        }
        let prefill_ms = self
            .prefill_ms
            .unwrap_or_else(|| ms_since(self.prefill_started));
        out.push_back(GenerationEvent::Finished(Box::new(GenerationSummary {
            backend: super::BACKEND_NAME.to_string(),
            model: engine.model_name.clone(),
            finish_reason: self.finish_reason,
            tool_calls: parsed.tool_calls,
            // What the model wrote is not passed on: it never went through the output
            // guard, and the problem says enough for the agent to try again.
            malformed_tool_calls: if parsed.malformed {
                vec![MalformedToolCall {
                    id: ToolCall::new_id(),
                    name: String::new(),
                    arguments: String::new(),
                    problem: "the model wrote a tool call that could not be read (an unclosed block, text that is not JSON, an unknown tool, or arguments that are not an object)".into(),
                }]
            } else {
                Vec::new()
            },
            usage: Usage {
                prompt_tokens: self.prompt_tokens as u32,
                completion_tokens: self.sampled_logprobs.len() as u32,
                cached_prompt_tokens: self.reused_prompt_tokens as u32,
            },
            confidence: Confidence::from_logprobs(self.sampled_logprobs),
            timings: Timings {
                queue_ms: self.queue_ms,
                prefill_ms,
                decode_ms: ms_since(self.decode_started),
                first_token_ms: self
                    .first_token_ms
                    .unwrap_or_else(|| ms_since(self.arrived)),
            },
        })));
    }
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
