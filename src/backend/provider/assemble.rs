//! Tool calls that arrive in pieces, as providers stream them: a call index, then an
//! id, name fragments and argument fragments, interleaved across calls. Nothing is
//! decided on a piece; both dialects put their calls back together here and every call
//! goes on to the tool-call gate whole. A call whose stream contradicts itself (its id
//! changes, it never gets a name, its index is out of range) is passed on as malformed,
//! with what went wrong, rather than guessed at; the gate refuses it and says why.
//! Arguments stay as the upstream wrote them, even when they are not JSON: policy
//! parses them strictly (a duplicate key or a number past f64 is refused there, where
//! re-serialising would change them silently) and delivers its own canonical form.

use std::collections::BTreeMap;

use crate::chat::{MalformedToolCall, ToolCall};

/// More calls than any model makes in one turn: a stream past this is broken.
const MAX_CALLS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("tool call {index}: its id changed from `{first}` to `{second}`")]
    IdChanged {
        index: usize,
        first: String,
        second: String,
    },
    #[error("tool call {0} has no name")]
    MissingName(usize),
    #[error("tool call index {0} is out of range (at most {MAX_CALLS} calls)")]
    IndexOutOfRange(usize),
}

#[derive(Debug, Default)]
struct Partial {
    id: Option<String>,
    name: String,
    arguments: String,
    /// Set once the pieces contradict each other; later pieces are ignored.
    problem: Option<DeltaError>,
}

#[derive(Debug, Default)]
pub struct ToolCallDeltas {
    calls: BTreeMap<usize, Partial>,
    /// Pieces past [`MAX_CALLS`]: counted once per index, never stored.
    out_of_range: Vec<usize>,
}

/// The calls of one answer, put back together.
#[derive(Debug, Default, PartialEq)]
pub struct Assembled {
    /// The calls whose pieces fit together, in index order.
    pub calls: Vec<ToolCall>,
    /// The others, each with what went wrong.
    pub malformed: Vec<MalformedToolCall>,
}

impl ToolCallDeltas {
    /// Adds one piece of the call at `index`.
    pub fn push(
        &mut self,
        index: usize,
        id: Option<&str>,
        name: Option<&str>,
        arguments: Option<&str>,
    ) {
        if index >= MAX_CALLS {
            if !self.out_of_range.contains(&index) {
                self.out_of_range.push(index);
            }
            return;
        }
        let call = self.calls.entry(index).or_default();
        if call.problem.is_some() {
            return;
        }
        match (&call.id, id.filter(|id| !id.is_empty())) {
            (Some(first), Some(second)) if first != second => {
                call.problem = Some(DeltaError::IdChanged {
                    index,
                    first: first.clone(),
                    second: second.to_string(),
                });
                return;
            }
            (None, Some(id)) => call.id = Some(id.to_string()),
            _ => {}
        }
        call.name.push_str(name.unwrap_or_default());
        call.arguments.push_str(arguments.unwrap_or_default());
    }

    /// The whole calls; a call that never got an id gets a fresh one, one that never
    /// got arguments gets `{}`.
    pub fn finish(self) -> Assembled {
        let mut assembled = Assembled::default();
        for (index, call) in self.calls {
            let id = call.id.unwrap_or_else(ToolCall::new_id);
            let problem = call.problem.or_else(|| {
                call.name
                    .is_empty()
                    .then_some(DeltaError::MissingName(index))
            });
            if let Some(problem) = problem {
                assembled.malformed.push(MalformedToolCall {
                    id,
                    name: call.name,
                    arguments: call.arguments,
                    problem: problem.to_string(),
                });
                continue;
            }
            let arguments = if call.arguments.trim().is_empty() {
                "{}".to_string()
            } else {
                call.arguments
            };
            assembled.calls.push(ToolCall {
                id,
                name: call.name,
                arguments,
            });
        }
        assembled.malformed.extend(
            self.out_of_range
                .into_iter()
                .map(|index| MalformedToolCall {
                    id: ToolCall::new_id(),
                    name: String::new(),
                    arguments: String::new(),
                    problem: DeltaError::IndexOutOfRange(index).to_string(),
                }),
        );
        assembled
    }
}
