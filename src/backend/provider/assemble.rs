//! Tool calls that arrive in pieces, as providers stream them: a call index, then an
//! id, name fragments and argument fragments, interleaved across calls. Nothing is
//! decided on a piece; both dialects put their calls back together here and only whole
//! calls go on to policy. A call whose stream contradicts itself (its id changes, it
//! never gets a name, its arguments are not one JSON object) is dropped and reported
//! rather than guessed at. Arguments stay as the upstream wrote them: policy parses
//! them strictly (a duplicate key is refused there, where re-serialising would keep
//! one of the values silently) and delivers its own canonical form.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::chat::ToolCall;

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
    #[error("tool call {0}: its arguments are not one JSON object")]
    ArgumentsNotAnObject(usize),
    #[error("tool call index {0} is out of range")]
    IndexOutOfRange(usize),
}

#[derive(Debug, Default)]
struct Partial {
    id: Option<String>,
    name: String,
    arguments: String,
    broken: bool,
}

#[derive(Debug, Default)]
pub struct ToolCallDeltas {
    calls: BTreeMap<usize, Partial>,
    problems: Vec<DeltaError>,
}

/// The calls of one answer, put back together.
#[derive(Debug, Default, PartialEq)]
pub struct Assembled {
    /// The usable calls, in index order.
    pub calls: Vec<ToolCall>,
    /// Why the others were dropped.
    pub problems: Vec<DeltaError>,
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
            if !self.problems.contains(&DeltaError::IndexOutOfRange(index)) {
                self.problems.push(DeltaError::IndexOutOfRange(index));
            }
            return;
        }
        let call = self.calls.entry(index).or_default();
        if call.broken {
            return;
        }
        match (&call.id, id.filter(|id| !id.is_empty())) {
            (Some(first), Some(second)) if first != second => {
                self.problems.push(DeltaError::IdChanged {
                    index,
                    first: first.clone(),
                    second: second.to_string(),
                });
                call.broken = true;
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
        let mut assembled = Assembled {
            calls: Vec::new(),
            problems: self.problems,
        };
        for (index, call) in self.calls {
            if call.broken {
                continue;
            }
            if call.name.is_empty() {
                assembled.problems.push(DeltaError::MissingName(index));
                continue;
            }
            let arguments = if call.arguments.trim().is_empty() {
                "{}".to_string()
            } else {
                call.arguments
            };
            if !matches!(serde_json::from_str(&arguments), Ok(Value::Object(_))) {
                assembled
                    .problems
                    .push(DeltaError::ArgumentsNotAnObject(index));
                continue;
            }
            assembled.calls.push(ToolCall {
                id: call.id.unwrap_or_else(ToolCall::new_id),
                name: call.name,
                arguments,
            });
        }
        assembled
    }
}
