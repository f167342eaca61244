//! Decides which generated text may be shown to the client yet. Text that might be the
//! start of a stop sequence is held until it is clear; once a tool call begins,
//! everything from there on is held so an unchecked call never leaks out mid-stream.

use super::template::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use super::tool_parse::starts_like_json_call;

pub struct OutputGate {
    stops: Vec<String>,
    tools_active: bool,
    text: String,
    released: usize,
    /// Where a tool call began; nothing from here on is released before the end.
    capture_from: Option<usize>,
    stopped: bool,
}

impl OutputGate {
    /// `prefix` is answer text written on the model's behalf; it passes the gate like
    /// generated text.
    pub fn new(stops: Vec<String>, tools_active: bool, prefix: &str) -> Self {
        let mut gate = Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            tools_active,
            text: String::new(),
            released: 0,
            capture_from: None,
            stopped: false,
        };
        gate.push(prefix);
        gate
    }

    /// Adds generated text; returns what may be released now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        let search_from = self.released;
        self.text.push_str(piece);
        if let Some(stop_at) = self.find_stop(search_from) {
            self.text.truncate(stop_at);
            self.stopped = true;
        }
        self.update_capture();
        self.end_after_tool_call();
        let hold_from = if self.stopped {
            self.text.len()
        } else {
            self.text.len() - self.pending_prefix_len()
        };
        let until = self.capture_from.map_or(hold_from, |c| c.min(hold_from));
        self.release_until(until)
    }

    /// A stop sequence was seen: generation should end.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// A tool call has begun and its JSON object is not closed yet. Ending the turn
    /// here could only give a malformed call, so the generation does not let the model
    /// end it (small models do end a forced call right after a long argument).
    pub fn inside_open_call(&self) -> bool {
        let Some(start) = self.capture_from.filter(|_| !self.stopped) else {
            return false;
        };
        let call = &self.text[start..];
        let json = call.strip_prefix(TOOL_CALL_OPEN).unwrap_or(call);
        json_object_unclosed(json)
    }

    /// Ends the gate: returns the text released so far is a prefix of, plus the held
    /// remainder (the caller parses it for tool calls).
    pub fn finish(self) -> (String, String) {
        let released = self.text[..self.released].to_string();
        let held = self.text[self.released..].to_string();
        (released, held)
    }

    fn release_until(&mut self, until: usize) -> String {
        if until <= self.released {
            return String::new();
        }
        let out = self.text[self.released..until].to_string();
        self.released = until;
        out
    }

    fn find_stop(&self, from: usize) -> Option<usize> {
        let window = &self.text[from..];
        self.stops
            .iter()
            .filter_map(|stop| window.find(stop.as_str()))
            .min()
            .map(|at| from + at)
    }

    fn update_capture(&mut self) {
        if !self.tools_active || self.capture_from.is_some() {
            return;
        }
        let unreleased = &self.text[self.released..];
        if let Some(at) = unreleased.find(TOOL_CALL_OPEN) {
            self.capture_from = Some(self.released + at);
        } else if self.released == 0 && starts_like_json_call(unreleased) {
            self.capture_from = Some(0);
        }
    }

    /// A local model that has closed its call tends to go on to imagine the tool's
    /// answer; the turn ends with the call.
    fn end_after_tool_call(&mut self) {
        let Some(start) = self.capture_from else {
            return;
        };
        if let Some(close) = self.text[start..].find(TOOL_CALL_CLOSE) {
            self.text.truncate(start + close + TOOL_CALL_CLOSE.len());
            self.stopped = true;
        }
    }

    /// Length of the longest tail of the unreleased text that could still grow into a
    /// stop sequence or a tool-call opening (or, before anything was said, into a bare
    /// JSON call: leading whitespace is held).
    fn pending_prefix_len(&self) -> usize {
        let unreleased = &self.text[self.released..];
        if self.tools_active && self.released == 0 && unreleased.trim_start().is_empty() {
            return unreleased.len();
        }
        let markers = self
            .stops
            .iter()
            .map(String::as_str)
            .chain(self.tools_active.then_some(TOOL_CALL_OPEN));
        markers
            .map(|marker| longest_suffix_prefix(unreleased, marker))
            .max()
            .unwrap_or(0)
    }
}

/// Whether `text` is empty of JSON yet or stops inside its first object (or a string in
/// it). Text after that object closes is not the call's business.
fn json_object_unclosed(text: &str) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for c in text.trim_start().chars() {
        match (in_string, c) {
            (true, _) if escaped => escaped = false,
            (true, '\\') => escaped = true,
            (true, '"') => in_string = false,
            (true, _) => {}
            (false, '"') => in_string = true,
            (false, '{' | '[') => depth += 1,
            (false, '}' | ']') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return false;
                }
            }
            (false, _) => {}
        }
    }
    true
}

/// The longest proper prefix of `marker` that `text` ends with, in bytes.
fn longest_suffix_prefix(text: &str, marker: &str) -> usize {
    let max = (marker.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&len| {
            let start = text.len() - len;
            text.is_char_boundary(start)
                && marker.is_char_boundary(len)
                && marker.starts_with(&text[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(gate: &mut OutputGate, pieces: &[&str]) -> String {
        pieces.iter().map(|p| gate.push(p)).collect()
    }

    #[test]
    fn a_call_is_open_until_its_object_closes() {
        let mut gate = OutputGate::new(vec![], true, "<tool_call>\n{\"name\": \"f\", ");
        assert!(gate.inside_open_call());
        gate.push("\"arguments\": {\"q\": \"a } \\\" {");
        assert!(
            gate.inside_open_call(),
            "braces and quotes in a string do not count"
        );
        gate.push("\"}");
        assert!(gate.inside_open_call());
        gate.push("}");
        assert!(!gate.inside_open_call());

        let plain = OutputGate::new(vec![], true, "");
        assert!(!plain.inside_open_call(), "no call begun");
    }

    #[test]
    fn plain_text_flows_through() {
        let mut gate = OutputGate::new(vec![], false, "");
        assert_eq!(run(&mut gate, &["Hello", ", world"]), "Hello, world");
        assert_eq!(gate.finish(), ("Hello, world".into(), String::new()));
    }

    #[test]
    fn stop_sequence_split_across_tokens_is_never_shown() {
        let mut gate = OutputGate::new(vec!["END".into()], false, "");
        assert_eq!(gate.push("one E"), "one ");
        assert_eq!(gate.push("N"), "");
        assert!(!gate.stopped());
        assert_eq!(gate.push("D two"), "");
        assert!(gate.stopped());
        assert_eq!(gate.finish(), ("one ".into(), String::new()));
    }

    #[test]
    fn held_prefix_released_when_it_does_not_complete() {
        let mut gate = OutputGate::new(vec!["END".into()], false, "");
        assert_eq!(gate.push("E"), "");
        assert_eq!(gate.push("ND"), "");
        let mut gate = OutputGate::new(vec!["END".into()], false, "");
        assert_eq!(gate.push("E"), "");
        assert_eq!(gate.push("ast"), "East");
    }

    #[test]
    fn tool_call_text_is_held_until_the_end() {
        let mut gate = OutputGate::new(vec![], true, "");
        let shown = run(
            &mut gate,
            &["Sure. <tool", "_call>{\"name\":", " \"x\"}</tool_call>"],
        );
        assert_eq!(shown, "Sure. ");
        let (released, held) = gate.finish();
        assert_eq!(released, "Sure. ");
        assert_eq!(held, "<tool_call>{\"name\": \"x\"}</tool_call>");
    }

    #[test]
    fn generation_ends_with_the_closed_call() {
        let mut gate = OutputGate::new(vec![], true, "");
        gate.push("<tool_call>{\"name\": \"x\"}</tool_call>\nThe weather is fine.");
        assert!(gate.stopped());
        assert_eq!(gate.finish().1, "<tool_call>{\"name\": \"x\"}</tool_call>");
    }

    #[test]
    fn bare_json_answer_is_held_when_tools_are_offered() {
        let mut gate = OutputGate::new(vec![], true, "");
        assert_eq!(run(&mut gate, &["  ", "{\"name\"", ": 1}"]), "");
        assert_eq!(gate.finish().1, "  {\"name\": 1}");
    }

    #[test]
    fn prefix_counts_as_output() {
        let mut gate = OutputGate::new(vec![], true, "<tool_call>\n{\"name\": \"");
        assert_eq!(gate.push("get\"}</tool_call>"), "");
        assert_eq!(
            gate.finish().1,
            "<tool_call>\n{\"name\": \"get\"}</tool_call>"
        );
    }

    #[test]
    fn multibyte_text_never_splits_a_character() {
        let mut gate = OutputGate::new(vec!["é!".into()], false, "");
        assert_eq!(gate.push("café"), "caf");
        assert_eq!(gate.push("?"), "é?");
    }
}
