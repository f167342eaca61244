//! `POST /v1/responses` (one response object, or its typed server-sent events),
//! `GET` and `DELETE /v1/responses/{id}` for the responses warden stored.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{stream, Stream, StreamExt};
use serde_json::{json, Value};
use tracing::Span;

use super::error::ApiError;
use super::extract::{Caller, OpenAiPath, RawBody};
use super::generate;
use super::openai::responses::{
    self, ResponseEvents, ResponseIdentity, ResponseObject, ResponseParts, StreamFrame,
};
use super::AppState;
use crate::chat::Message;
use crate::error::GatewayError;
use crate::gateway::{self, RequestContext, ResponseEvent, ResponseStream};

pub async fn create(
    State(state): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    generate::in_request(state, principal, headers, body, answer).await
}

/// What a stored response is kept for: `GET` returns it, a follow-up continues it.
struct Kept {
    store: Arc<ResponseStore>,
    agent: String,
    /// The conversation as sent (instructions first, at `history_at`), once a
    /// response is to be stored.
    messages: Option<Vec<Message>>,
    history_at: usize,
}

impl Kept {
    fn keep(self, response: &ResponseObject) {
        let Some(messages) = self.messages else {
            return;
        };
        let conversation = responses::continued_conversation(messages, self.history_at, response);
        let body = serde_json::to_string(response).unwrap_or_else(|_| "{}".into());
        self.store
            .insert(response.id.clone(), &self.agent, body, conversation);
    }
}

async fn answer(
    state: AppState,
    context: RequestContext,
    headers: HeaderMap,
    body: Result<Bytes, ApiError>,
    span: Span,
) -> Result<Response, ApiError> {
    let parse = Box::new(responses::parse_body);
    let (mut parsed, parts) =
        generate::read_request(&state, &context, &headers, body, parse).await?;
    let ResponseParts {
        previous_response_id,
        store,
        history_at,
        echo,
        logprobs,
        origins,
    } = parts;
    if let Some(previous) = &previous_response_id {
        let Some(stored) = state.responses.get(previous, &context.principal.agent_id) else {
            let missing = ApiError::ResponseNotFound(previous.clone());
            let error = GatewayError::invalid("previous_response_id", missing.to_string());
            return Err(generate::refused(&state, &context, &[], error.into()).await);
        };
        let messages = &mut parsed.chat.messages;
        messages.splice(history_at..history_at, stored.conversation.iter().cloned());
    }
    let kept = Kept {
        store: state.responses.clone(),
        agent: context.principal.agent_id.clone(),
        messages: store.then(|| parsed.chat.messages.clone()),
        history_at,
    };
    let stream = parsed.stream;
    let request_id = context.request_id.clone();
    // The gateway's refusals (a schema the local model cannot hold its answer to, say)
    // name the chat field; the client wrote the Responses one.
    let in_responses_terms = |error| responses::in_responses_terms(error, &origins);
    let started = generate::start(&state, context, parsed, in_responses_terms).await?;
    let identity = ResponseIdentity {
        id: format!("resp_{request_id}"),
        created_at: generate::unix_now(),
        model: started.model.clone(),
        echo,
        logprobs,
    };
    let response = if stream {
        let events = sse_events(started.events, ResponseEvents::new(identity), kept);
        let events = generate::in_span(span, Box::pin(events));
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let answer = gateway::collect(started.events).await?;
        generate::log_completed(&answer.finished);
        let text = answer.texts.into_iter().next().unwrap_or_default();
        let response = identity.completed(text.content, text.logprobs, &answer.finished);
        kept.keep(&response);
        Json(response).into_response()
    };
    Ok(generate::with_route(response, &started.route))
}

fn sse_events(
    events: ResponseStream,
    mut writer: ResponseEvents,
    kept: Kept,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let head = stream::iter(writer.opening().into_iter().map(sse_event));
    // Taken by the one `Finished` event.
    let mut kept = Some(kept);
    let body = events.flat_map(move |event| {
        let frames = match event {
            Ok(ResponseEvent::Content { text, logprobs, .. }) => writer.content(text, logprobs),
            Ok(ResponseEvent::Finished(completed)) => {
                generate::log_completed(&completed);
                let (frames, response) = writer.finish(&completed);
                if let Some(kept) = kept.take() {
                    kept.keep(&response);
                }
                frames
            }
            Err(error) => writer.failure(&generate::stream_failure(error).body()),
        };
        stream::iter(frames.into_iter().map(sse_event))
    });
    head.chain(body)
}

fn sse_event((kind, data): StreamFrame) -> Result<Event, Infallible> {
    let json = serde_json::to_string(&data).unwrap_or_else(|_| "{}".into());
    Ok(Event::default().event(kind).data(json))
}

/// `GET /v1/responses/{id}`: a response this agent stored.
pub async fn show(
    State(state): State<AppState>,
    Caller(principal): Caller,
    OpenAiPath(id): OpenAiPath<String>,
) -> Result<Response, ApiError> {
    let stored = state
        .responses
        .get(&id, &principal.agent_id)
        .ok_or(ApiError::ResponseNotFound(id))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        stored.body.to_string(),
    )
        .into_response())
}

/// `DELETE /v1/responses/{id}`: forgets a response this agent stored.
pub async fn delete(
    State(state): State<AppState>,
    Caller(principal): Caller,
    OpenAiPath(id): OpenAiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.responses.remove(&id, &principal.agent_id) {
        return Err(ApiError::ResponseNotFound(id));
    }
    Ok(Json(
        json!({"id": id, "object": "response.deleted", "deleted": true}),
    ))
}

/// A stored response: its body as answered, and the conversation a follow-up
/// continues.
#[derive(Clone)]
pub struct StoredResponse {
    agent: String,
    body: Arc<str>,
    conversation: Arc<[Message]>,
}

/// The responses kept for `GET` and `previous_response_id`, in memory within a byte
/// budget (`server.stored_responses_mib`): past it, the oldest are forgotten first. A
/// restart forgets them all.
pub struct ResponseStore {
    budget: usize,
    kept: Mutex<Stored>,
}

#[derive(Default)]
struct Stored {
    by_id: HashMap<String, (StoredResponse, usize)>,
    /// Ids oldest first; a deleted one stays until its turn comes or the list is
    /// compacted.
    order: VecDeque<String>,
    bytes: usize,
}

impl ResponseStore {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            kept: Mutex::new(Stored::default()),
        }
    }

    fn insert(&self, id: String, agent: &str, body: String, conversation: Vec<Message>) {
        // An estimate: the text held, plus a little for each message's bookkeeping.
        let size = body.len()
            + conversation
                .iter()
                .map(|message| {
                    64 + message.content.len()
                        + message
                            .tool_calls
                            .iter()
                            .map(|call| call.arguments.len() + call.name.len() + call.id.len())
                            .sum::<usize>()
                })
                .sum::<usize>();
        if size > self.budget {
            return;
        }
        let stored = StoredResponse {
            agent: agent.to_string(),
            body: body.into(),
            conversation: conversation.into(),
        };
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        while kept.bytes + size > self.budget {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            if let Some((_, freed)) = kept.by_id.remove(&oldest) {
                kept.bytes -= freed;
            }
        }
        kept.bytes += size;
        kept.order.push_back(id.clone());
        kept.by_id.insert(id, (stored, size));
    }

    fn get(&self, id: &str, agent: &str) -> Option<StoredResponse> {
        let kept = self.kept.lock().ok()?;
        let (stored, _) = kept.by_id.get(id)?;
        (stored.agent == agent).then(|| stored.clone())
    }

    fn remove(&self, id: &str, agent: &str) -> bool {
        let Ok(mut kept) = self.kept.lock() else {
            return false;
        };
        let owned = kept.by_id.get(id).map(|(stored, _)| stored.agent == agent);
        if owned != Some(true) {
            return false;
        }
        if let Some((_, freed)) = kept.by_id.remove(id) {
            kept.bytes -= freed;
        }
        // Deleted ids wait in `order` for their turn; past twice the live ones, they
        // are swept out so the list stays bounded.
        if kept.order.len() > 2 * kept.by_id.len() + 64 {
            let Stored { by_id, order, .. } = &mut *kept;
            order.retain(|id| by_id.contains_key(id));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Role;

    fn conversation(text: &str) -> Vec<Message> {
        vec![Message::text(Role::User, text)]
    }

    #[test]
    fn past_its_budget_the_store_forgets_the_oldest_first() {
        // Each entry is 200 bytes: a 100-byte body, a 36-byte message, 64 of bookkeeping.
        let store = ResponseStore::new(650);
        for id in ["a", "b", "c", "d", "e"] {
            let body = "x".repeat(100);
            store.insert(id.into(), "agent", body, conversation(&"y".repeat(36)));
        }
        let kept: Vec<&str> = ["a", "b", "c", "d", "e"]
            .into_iter()
            .filter(|id| store.get(id, "agent").is_some())
            .collect();
        assert_eq!(kept, ["c", "d", "e"]);
        let too_large = "z".repeat(1000);
        store.insert("f".into(), "agent", too_large, conversation("q"));
        assert!(store.get("f", "agent").is_none(), "larger than the budget");
        assert!(
            store.get("e", "agent").is_some(),
            "and nothing evicted for it"
        );
    }

    #[test]
    fn a_stored_response_is_its_agents_alone() {
        let store = ResponseStore::new(1 << 20);
        store.insert("r".into(), "owner", "{}".into(), conversation("hi"));
        assert!(store.get("r", "other").is_none());
        assert!(!store.remove("r", "other"));
        assert_eq!(store.get("r", "owner").unwrap().conversation.len(), 1);
        assert!(store.remove("r", "owner"));
        assert!(store.get("r", "owner").is_none());
        assert!(!store.remove("r", "owner"));
    }

    #[test]
    fn deleted_ids_do_not_pile_up() {
        let store = ResponseStore::new(1 << 20);
        for index in 0..1000 {
            let id = format!("r{index}");
            store.insert(id.clone(), "agent", "{}".into(), conversation("hi"));
            assert!(store.remove(&id, "agent"));
        }
        let kept = store.kept.lock().unwrap();
        assert!(kept.order.len() <= 64 + 1, "{}", kept.order.len());
        assert_eq!(kept.bytes, 0);
    }
}
