//! Server-sent events from an upstream, as they arrive in arbitrary byte chunks.

/// One event: its `event:` name, if any, and its `data:` lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: Option<String>,
    pub data: String,
}

/// The longest event an upstream may send. Far beyond any real delta (a few hundred
/// bytes) or whole answer; a stream without event ends would otherwise grow the buffer
/// until memory ran out.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

#[derive(Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    /// How far `buffer` is known to hold no event end.
    scanned: usize,
}

impl SseDecoder {
    /// Feeds bytes; returns the events completed by them, or an error once an event
    /// grows past `MAX_EVENT_BYTES`.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        // Carriage returns only ever separate lines in SSE (JSON escapes its own).
        if bytes.contains(&b'\r') {
            self.buffer
                .extend(bytes.iter().copied().filter(|&b| b != b'\r'));
        } else {
            self.buffer.extend_from_slice(bytes);
        }
        let mut events = Vec::new();
        let mut consumed = 0;
        // An event ends at a blank line: "\n\n", which may straddle the last push.
        let mut from = self.scanned.saturating_sub(1);
        while let Some(at) = find_blank_line(&self.buffer[from..]) {
            let end = from + at;
            if let Some(event) = parse_block(&self.buffer[consumed..end]) {
                events.push(event);
            }
            consumed = end + 2;
            from = consumed;
        }
        self.buffer.drain(..consumed);
        self.scanned = self.buffer.len();
        if self.buffer.len() > MAX_EVENT_BYTES {
            return Err(format!(
                "an event of the stream ran past {MAX_EVENT_BYTES} bytes"
            ));
        }
        Ok(events)
    }

    /// The stream ended: a last event without its blank line still counts.
    pub fn finish(&mut self) -> Option<SseEvent> {
        self.scanned = 0;
        let block = std::mem::take(&mut self.buffer);
        parse_block(&block)
    }
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = bytes[from..].iter().position(|&b| b == b'\n') {
        let newline = from + at;
        if bytes.get(newline + 1) == Some(&b'\n') {
            return Some(newline);
        }
        from = newline + 1;
    }
    None
}

fn parse_block(block: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(block);
    let mut name = None;
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut data {
                None => data = Some(value.to_string()),
                Some(joined) => {
                    joined.push('\n');
                    joined.push_str(value);
                }
            }
        } else if let Some(value) = line.strip_prefix("event:") {
            name = Some(value.trim().to_string());
        }
    }
    data.map(|data| SseEvent { name, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut decoder = SseDecoder::default();
        assert!(decoder
            .push(b"event: message_start\r\ndata: {\"a\"")
            .unwrap()
            .is_empty());
        let events = decoder
            .push(b": 1}\r\n\r\n: comment\n\ndata: [DONE]\n\n")
            .unwrap();
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
    fn a_blank_line_split_between_pushes_still_ends_the_event() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: a\n").unwrap().is_empty());
        let events = decoder.push(b"\ndata: b\n\ndata: c").unwrap();
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["a", "b"]);
        assert_eq!(decoder.push(b"\n\n").unwrap()[0].data, "c");
        assert!(decoder.finish().is_none());
    }

    #[test]
    fn multi_line_data_is_joined_and_a_trailing_event_is_kept() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: one\ndata: two").unwrap().is_empty());
        assert_eq!(decoder.finish().unwrap().data, "one\ntwo");
    }

    #[test]
    fn an_event_that_never_ends_is_an_error_not_a_growing_buffer() {
        let mut decoder = SseDecoder::default();
        let chunk = vec![b'x'; 1 << 20];
        let mut pushed = 0;
        let failed = loop {
            pushed += chunk.len();
            if let Err(error) = decoder.push(&chunk) {
                break error;
            }
            assert!(pushed <= MAX_EVENT_BYTES, "still buffering past the limit");
        };
        assert!(failed.contains("bytes"), "{failed}");
    }
}
