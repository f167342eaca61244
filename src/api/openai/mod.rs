//! OpenAI's wire format: the types, their validation into domain requests, and the
//! conversion of results back.

pub mod completions;
pub mod embeddings;
pub mod request;
pub mod response;
pub mod responses;
pub mod types;
