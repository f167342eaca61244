//! Domain results to OpenAI's response and stream-chunk shapes.

use super::types::{
    ChatCompletion, ChatCompletionChunk, Choice, ChunkChoice, Delta, FunctionCall, LogprobsBody,
    ResponseMessage, ResponseToolCall,
};
use crate::chat::{FinishReason, TokenLogprob, ToolCall};
use crate::gateway::{Recorded, Response};

pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Deadline => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

fn tool_calls(calls: &[ToolCall], indexed: bool) -> Vec<ResponseToolCall> {
    calls
        .iter()
        .enumerate()
        .map(|(index, call)| ResponseToolCall {
            index: indexed.then_some(index as u32),
            id: call.id.clone(),
            kind: "function",
            function: FunctionCall {
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            },
        })
        .collect()
}

/// Identity shared by every chunk (and the whole response) of one completion.
pub struct CompletionIdentity {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// The request offered `functions` (the API before tools): a call goes back as
    /// `function_call`, the one call that API has room for, with finish reason
    /// `function_call`.
    pub legacy_functions: bool,
}

/// How an answer's calls are written: as tool calls, or as the one legacy call.
struct Calls {
    tool_calls: Vec<ResponseToolCall>,
    function_call: Option<FunctionCall>,
    finish_reason: &'static str,
}

impl CompletionIdentity {
    fn calls(&self, calls: &[ToolCall], finish: FinishReason, indexed: bool) -> Calls {
        match calls.first() {
            Some(first) if self.legacy_functions => Calls {
                tool_calls: Vec::new(),
                function_call: Some(FunctionCall {
                    name: first.name.clone(),
                    arguments: first.arguments.clone(),
                }),
                finish_reason: "function_call",
            },
            _ => Calls {
                tool_calls: tool_calls(calls, indexed),
                function_call: None,
                finish_reason: finish_reason(finish),
            },
        }
    }

    pub fn completion(&self, response: Response, logprobs: bool) -> ChatCompletion {
        let Recorded {
            choices,
            usage,
            report_json,
            ..
        } = response.finished;
        let choices = response
            .texts
            .into_iter()
            .zip(&choices)
            .zip(0u32..)
            .map(|((text, summary), index)| {
                let content = (!text.content.is_empty() || summary.tool_calls.is_empty())
                    .then_some(text.content);
                let calls = self.calls(&summary.tool_calls, summary.finish_reason, false);
                Choice {
                    index,
                    message: ResponseMessage {
                        role: "assistant",
                        content,
                        tool_calls: calls.tool_calls,
                        function_call: calls.function_call,
                    },
                    logprobs: logprobs.then_some(LogprobsBody {
                        content: text.logprobs,
                    }),
                    finish_reason: calls.finish_reason,
                }
            })
            .collect();
        ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: usage.into(),
            warden: report_json,
        }
    }

    fn chunk(
        &self,
        choice: u32,
        delta: Delta,
        logprobs: Option<Vec<TokenLogprob>>,
        finish: Option<&'static str>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: choice,
                delta,
                logprobs: logprobs.map(|content| LogprobsBody { content }),
                finish_reason: finish,
            }],
            usage: None,
            warden: None,
        }
    }

    /// The opening chunk of each of `choices` answers.
    pub fn role_chunks(&self, choices: u32) -> Vec<ChatCompletionChunk> {
        (0..choices.max(1))
            .map(|choice| {
                self.chunk(
                    choice,
                    Delta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                        ..Delta::default()
                    },
                    None,
                    None,
                )
            })
            .collect()
    }

    pub fn content_chunk(
        &self,
        choice: u32,
        text: String,
        logprobs: Option<Vec<TokenLogprob>>,
    ) -> ChatCompletionChunk {
        self.chunk(
            choice,
            Delta {
                content: Some(text),
                ..Delta::default()
            },
            logprobs,
            None,
        )
    }

    /// The closing chunks: each choice's tool calls (if any) and finish reason, the
    /// last of them with warden's report, then usage when the client asked for it.
    pub fn final_chunks(
        &self,
        completed: &Recorded,
        include_usage: bool,
    ) -> Vec<ChatCompletionChunk> {
        let mut chunks = Vec::new();
        for (summary, choice) in completed.choices.iter().zip(0u32..) {
            let calls = self.calls(&summary.tool_calls, summary.finish_reason, true);
            if !calls.tool_calls.is_empty() || calls.function_call.is_some() {
                chunks.push(self.chunk(
                    choice,
                    Delta {
                        tool_calls: calls.tool_calls,
                        function_call: calls.function_call,
                        ..Delta::default()
                    },
                    None,
                    None,
                ));
            }
            chunks.push(self.chunk(choice, Delta::default(), None, Some(calls.finish_reason)));
        }
        if let Some(last) = chunks.last_mut() {
            last.warden = Some(completed.report_json.clone());
        }
        if include_usage {
            chunks.push(ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(completed.usage.into()),
                warden: None,
            });
        }
        chunks
    }
}
