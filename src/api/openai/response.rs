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
}

impl CompletionIdentity {
    pub fn completion(&self, response: Response, logprobs: bool) -> ChatCompletion {
        let Recorded {
            summary,
            report_json,
            ..
        } = response.finished;
        let content = (!response.content.is_empty() || summary.tool_calls.is_empty())
            .then_some(response.content);
        ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![Choice {
                index: 0,
                message: ResponseMessage {
                    role: "assistant",
                    content,
                    tool_calls: tool_calls(&summary.tool_calls, false),
                },
                logprobs: logprobs.then_some(LogprobsBody {
                    content: response.logprobs,
                }),
                finish_reason: finish_reason(summary.finish_reason),
            }],
            usage: summary.usage.into(),
            warden: report_json,
        }
    }

    fn chunk(
        &self,
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
                index: 0,
                delta,
                logprobs: logprobs.map(|content| LogprobsBody { content }),
                finish_reason: finish,
            }],
            usage: None,
            warden: None,
        }
    }

    pub fn role_chunk(&self) -> ChatCompletionChunk {
        self.chunk(
            Delta {
                role: Some("assistant"),
                content: Some(String::new()),
                ..Delta::default()
            },
            None,
            None,
        )
    }

    pub fn content_chunk(
        &self,
        text: String,
        logprobs: Option<Vec<TokenLogprob>>,
    ) -> ChatCompletionChunk {
        self.chunk(
            Delta {
                content: Some(text),
                ..Delta::default()
            },
            logprobs,
            None,
        )
    }

    /// The closing chunks: tool calls (if any), the finish reason with warden's report,
    /// then usage when the client asked for it.
    pub fn final_chunks(
        &self,
        completed: &Recorded,
        include_usage: bool,
    ) -> Vec<ChatCompletionChunk> {
        let summary = &completed.summary;
        let mut chunks = Vec::new();
        if !summary.tool_calls.is_empty() {
            chunks.push(self.chunk(
                Delta {
                    tool_calls: tool_calls(&summary.tool_calls, true),
                    ..Delta::default()
                },
                None,
                None,
            ));
        }
        let mut last = self.chunk(
            Delta::default(),
            None,
            Some(finish_reason(summary.finish_reason)),
        );
        last.warden = Some(completed.report_json.clone());
        chunks.push(last);
        if include_usage {
            chunks.push(ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(summary.usage.into()),
                warden: None,
            });
        }
        chunks
    }
}
