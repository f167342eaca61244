//! Tool calls that arrive in pieces, as OpenAI-compatible providers stream them: a
//! call index, then an id, name fragments and argument fragments, interleaved across
//! calls. Nothing is decided on a piece; the calls are put back together here and
//! only whole calls go to policy. A stream that contradicts itself (an index whose id
//! changes, a call without a name) is refused rather than guessed at.

use std::collections::BTreeMap;

use crate::chat::ToolCall;

/// More calls than any model makes in one turn: a stream past this is broken.
const MAX_CALLS: u32 = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("tool call {index}: its id changed from `{first}` to `{second}`")]
    IdChanged {
        index: u32,
        first: String,
        second: String,
    },
    #[error("tool call {0} has no name")]
    MissingName(u32),
    #[error("tool call index {0} is out of range")]
    IndexOutOfRange(u32),
}

#[derive(Debug, Default)]
struct Partial {
    id: Option<String>,
    name: String,
    arguments: String,
}

#[derive(Debug, Default)]
pub struct ToolCallDeltas {
    calls: BTreeMap<u32, Partial>,
}

impl ToolCallDeltas {
    /// Adds one delta of the call at `index`.
    pub fn push(
        &mut self,
        index: u32,
        id: Option<&str>,
        name: Option<&str>,
        arguments: Option<&str>,
    ) -> Result<(), DeltaError> {
        if index >= MAX_CALLS {
            return Err(DeltaError::IndexOutOfRange(index));
        }
        let call = self.calls.entry(index).or_default();
        match (&call.id, id.filter(|id| !id.is_empty())) {
            (Some(first), Some(second)) if first != second => {
                return Err(DeltaError::IdChanged {
                    index,
                    first: first.clone(),
                    second: second.to_string(),
                })
            }
            (None, Some(id)) => call.id = Some(id.to_string()),
            _ => {}
        }
        call.name.push_str(name.unwrap_or_default());
        call.arguments.push_str(arguments.unwrap_or_default());
        Ok(())
    }

    /// The whole calls, in index order; a call that never got an id gets a fresh one.
    pub fn finish(self) -> Result<Vec<ToolCall>, DeltaError> {
        self.calls
            .into_iter()
            .map(|(index, call)| {
                if call.name.is_empty() {
                    return Err(DeltaError::MissingName(index));
                }
                Ok(ToolCall {
                    id: call
                        .id
                        .unwrap_or_else(|| format!("call_{}", uuid::Uuid::new_v4().simple())),
                    name: call.name,
                    arguments: call.arguments,
                })
            })
            .collect()
    }
}
