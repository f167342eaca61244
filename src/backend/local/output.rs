//! Decides which generated text may be shown to the client yet. Text that might be the
//! start of a stop sequence is held until it is clear; once a tool call begins,
//! everything from there on is held so an unchecked call never leaks out mid-stream.
//! Where a call ends is the grammar's business (`constraint`); the gate only ends an
//! answer that repeats a call it has made.

use super::template::TOOL_CALL_OPEN;
use super::tool_parse::{self, starts_like_json_call};

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
    pub fn new(stops: Vec<String>, tools_active: bool) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            tools_active,
            text: String::new(),
            released: 0,
            capture_from: None,
            stopped: false,
        }
    }

    /// The answer must be a tool call: nothing of it is released before the end.
    pub fn holding_everything(mut self) -> Self {
        self.capture_from = Some(0);
        self
    }

    /// Adds generated text; returns what may be released now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        let search_from = self.released;
        self.text.push_str(piece);
        self.update_capture();
        // A stop sequence ends the text, not a tool call the grammar is writing: its
        // own newlines and quotes would otherwise cut it short.
        let window_end = self.capture_from.unwrap_or(self.text.len());
        if let Some(stop_at) = self.find_stop(search_from, window_end) {
            self.text.truncate(stop_at);
            self.capture_from = None;
            self.stopped = true;
        }
        // A call is whole only once its closing tag's last byte has come.
        if piece.contains('>') {
            self.end_at_repeated_call();
        }
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

    /// Ends the gate: returns the text released so far is a prefix of, plus the held
    /// remainder (the caller parses it for tool calls).
    pub fn finish(self) -> (String, String) {
        let released = self.text[..self.released].to_string();
        let held = self.text[self.released..].to_string();
        (released, held)
    }

    /// A small model allowed several calls tends to repeat the one it just made, word
    /// for word, until its tokens run out; the answer ends before the repeat.
    fn end_at_repeated_call(&mut self) {
        let Some(start) = self.capture_from else {
            return;
        };
        let calls = &self.text[start..];
        let (made, _) = tool_parse::blocks(calls);
        let written = |index: usize| &calls[made[index].start..made[index].end];
        if let Some(repeat) = (1..made.len()).find(|&i| (0..i).any(|j| written(j) == written(i))) {
            self.text.truncate(start + made[repeat].start);
            self.stopped = true;
        }
    }

    fn release_until(&mut self, until: usize) -> String {
        if until <= self.released {
            return String::new();
        }
        let out = self.text[self.released..until].to_string();
        self.released = until;
        out
    }

    fn find_stop(&self, from: usize, to: usize) -> Option<usize> {
        let window = &self.text[from..to.max(from)];
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
    fn plain_text_flows_through() {
        let mut gate = OutputGate::new(vec![], false);
        assert_eq!(run(&mut gate, &["Hello", ", world"]), "Hello, world");
        assert_eq!(gate.finish(), ("Hello, world".into(), String::new()));
    }

    #[test]
    fn stop_sequence_split_across_tokens_is_never_shown() {
        let mut gate = OutputGate::new(vec!["END".into()], false);
        assert_eq!(gate.push("one E"), "one ");
        assert_eq!(gate.push("N"), "");
        assert!(!gate.stopped());
        assert_eq!(gate.push("D two"), "");
        assert!(gate.stopped());
        assert_eq!(gate.finish(), ("one ".into(), String::new()));
    }

    #[test]
    fn held_prefix_released_when_it_does_not_complete() {
        let mut gate = OutputGate::new(vec!["END".into()], false);
        assert_eq!(gate.push("E"), "");
        assert_eq!(gate.push("ND"), "");
        let mut gate = OutputGate::new(vec!["END".into()], false);
        assert_eq!(gate.push("E"), "");
        assert_eq!(gate.push("ast"), "East");
    }

    #[test]
    fn tool_call_text_is_held_until_the_end() {
        let mut gate = OutputGate::new(vec![], true);
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
    fn stop_sequences_do_not_cut_a_call_short() {
        let mut gate = OutputGate::new(vec!["\n".into()], true);
        gate.push("<tool_call>\n{\"name\": \"x\"}\n</tool_call>");
        assert!(!gate.stopped());
        assert_eq!(
            gate.finish().1,
            "<tool_call>\n{\"name\": \"x\"}\n</tool_call>"
        );
        let mut gate = OutputGate::new(vec!["\n".into()], true);
        assert_eq!(gate.push("Sure\n<tool_call>\n{"), "Sure");
        assert!(gate.stopped());
        assert_eq!(gate.finish(), ("Sure".into(), String::new()));
    }

    #[test]
    fn a_repeated_call_ends_the_answer() {
        let call = "<tool_call>\n{\"name\": \"x\"}\n</tool_call>";
        let other = "<tool_call>\n{\"name\": \"y\"}\n</tool_call>";
        let mut gate = OutputGate::new(vec![], true);
        gate.push(&format!("{call}\n{other}\n"));
        assert!(!gate.stopped(), "two different calls");
        gate.push(&format!("{call}\n<tool_"));
        assert!(gate.stopped());
        assert_eq!(gate.finish().1, format!("{call}\n{other}\n"));
    }

    #[test]
    fn bare_json_answer_is_held_when_tools_are_offered() {
        let mut gate = OutputGate::new(vec![], true);
        assert_eq!(run(&mut gate, &["  ", "{\"name\"", ": 1}"]), "");
        assert_eq!(gate.finish().1, "  {\"name\": 1}");
    }

    #[test]
    fn multibyte_text_never_splits_a_character() {
        let mut gate = OutputGate::new(vec!["é!".into()], false);
        assert_eq!(gate.push("café"), "caf");
        assert_eq!(gate.push("?"), "é?");
    }
}
