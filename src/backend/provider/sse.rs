//! Server-sent events from an upstream, as they arrive in arbitrary byte chunks.

/// One event: its `event:` name, if any, and its `data:` lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: Option<String>,
    pub data: String,
}

#[derive(Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
}

impl SseDecoder {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        // Carriage returns only ever separate lines in SSE (JSON escapes its own).
        self.buffer
            .extend(bytes.iter().copied().filter(|&b| b != b'\r'));
        let mut events = Vec::new();
        while let Some(end) = find(&self.buffer, b"\n\n") {
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            if let Some(event) = parse_block(&block[..end]) {
                events.push(event);
            }
        }
        events
    }

    /// The stream ended: a last event without its blank line still counts.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let block = std::mem::take(&mut self.buffer);
        parse_block(&block)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn parse_block(block: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(block);
    let mut name = None;
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value));
        } else if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim().to_string());
        }
    }
    (!data.is_empty()).then(|| SseEvent {
        name,
        data: data.join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut decoder = SseDecoder::default();
        assert!(decoder
            .push(b"event: message_start\r\ndata: {\"a\"")
            .is_empty());
        let events = decoder.push(b": 1}\r\n\r\n: comment\n\ndata: [DONE]\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    name: Some("message_start".into()),
                    data: "{\"a\": 1}".into()
                },
                SseEvent {
                    name: None,
                    data: "[DONE]".into()
                },
            ]
        );
    }

    #[test]
    fn multi_line_data_is_joined_and_a_trailing_event_is_kept() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: one\ndata: two").is_empty());
        assert_eq!(decoder.finish().unwrap().data, "one\ntwo");
    }
}
