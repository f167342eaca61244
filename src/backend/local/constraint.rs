//! Constrained decoding: the grammar a local generation must follow, and the mask over
//! the model's vocabulary it allows at each step. A required call is forced from its
//! first byte; under `tool_choice: "auto"` the model writes freely until it opens a call,
//! and from there the call is held to an offered tool's name and its JSON schema; a
//! `response_format` holds the answer to JSON. The grammar engine is llguidance (the one
//! llama.cpp, vLLM and SGLang use), fed the model's own vocabulary, so the mask is exact
//! for this tokenizer.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

use super::template::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use crate::chat::{ChatRequest, ResponseFormat, ToolChoice, ToolSpec};

type Tokenize = Box<dyn Fn(&[u8]) -> Vec<TokenId> + Send + Sync>;

/// The model's vocabulary as the grammar engine sees it: each token's bytes, with
/// control tokens marked so no text can stand for them.
struct Vocabulary {
    trie: TokTrie,
    tokenize: Tokenize,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Used for the literal text of a grammar: the tokens the model was trained on.
    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<TokenId> {
        (self.tokenize)(bytes)
    }
}

/// Compiles grammars for one model: built once when the model loads.
pub struct Grammars {
    factory: ParserFactory,
    closing: Arc<Vec<Option<Closer>>>,
    end_of_turn: TokenId,
}

impl Grammars {
    /// `token_bytes(id)` for every id below `vocab_size` (the model's logits, which may
    /// run past the tokenizer's list); `end_of_turn` is the token that ends an answer;
    /// `tokenize` is the model's tokenizer.
    pub fn new(
        vocab_size: usize,
        token_bytes: impl Fn(u32) -> Vec<u8>,
        is_control: impl Fn(u32) -> bool,
        end_of_turn: u32,
        tokenize: impl Fn(&[u8]) -> Vec<TokenId> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let closing: Vec<Option<Closer>> = (0..vocab_size as u32)
            .map(|id| {
                (!is_control(id))
                    .then(|| Closer::of(&token_bytes(id)))
                    .flatten()
            })
            .collect();
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| {
                let bytes = token_bytes(id);
                if is_control(id) || bytes.is_empty() {
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    marked.extend_from_slice(
                        if bytes.is_empty() {
                            format!("<[{id}]>").into_bytes()
                        } else {
                            bytes
                        }
                        .as_slice(),
                    );
                    marked
                } else {
                    bytes
                }
            })
            .collect();
        let mut info = TokRxInfo::new(vocab_size as u32, end_of_turn);
        info.tok_end_of_turn = Some(end_of_turn);
        let vocabulary: TokEnv = Arc::new(Vocabulary {
            trie: TokTrie::from(&info, &words),
            tokenize: Box::new(tokenize),
        });
        let mut factory = ParserFactory::new_simple(&vocabulary).map_err(|e| e.to_string())?;
        // Its diagnostics would go to stderr; a grammar's errors come back as values.
        factory.quiet();
        Ok(Self {
            factory,
            closing: Arc::new(closing),
            end_of_turn,
        })
    }

    /// The constraint `request` puts on the answer, if any. A schema the engine cannot
    /// compile is an error naming the request field it came from.
    pub fn for_request(&self, request: &ChatRequest) -> Result<Option<Constraint>, GrammarError> {
        let Some(grammar) = grammar_for(request) else {
            return Ok(None);
        };
        match self.compile(grammar) {
            Ok(matcher) => Ok(Some(Constraint {
                matcher,
                closing: self.closing.clone(),
                end_of_turn: self.end_of_turn,
            })),
            Err(message) => Err(GrammarError {
                field: self.culprit(request),
                message,
            }),
        }
    }

    fn compile(&self, lark: String) -> Result<Matcher, String> {
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_lark(lark))
            .map_err(|e| reason_only(&e.to_string()))?;
        Ok(Matcher::new(Ok(parser)))
    }

    /// Which schema of `request` the engine refused: each is compiled alone, which is
    /// only worth its cost once the whole has failed.
    fn culprit(&self, request: &ChatRequest) -> String {
        let refused = |schema: &Value| {
            self.compile(format!("start: {}", json_rule(schema)))
                .is_err()
        };
        if let Some(index) = request
            .callable_tools()
            .iter()
            .position(|tool| refused(&arguments_schema(&tool.parameters)))
        {
            return format!("tools[{index}].function.parameters");
        }
        match &request.response_format {
            ResponseFormat::JsonSchema { schema, .. } if refused(schema) => {
                "response_format.json_schema.schema".into()
            }
            _ if request.callable_tools().is_empty() => "response_format".into(),
            _ => "tools".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the local model cannot be held to `{field}`: {message}")]
pub struct GrammarError {
    /// The request field whose schema could not be compiled.
    pub field: String,
    pub message: String,
}

/// What a token can close, by the bytes it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closer {
    /// A quote: where the grammar allows one inside a string, it ends the string; where
    /// it allows one elsewhere, it begins the shortest value there is.
    Quote,
    /// `}` or `]` and no quote: outside a string, the end of an object or an array.
    Bracket,
}

impl Closer {
    /// `, "` and `: "` open a key or a value rather than close anything, and `",`
    /// closes a string only to go on to another member.
    fn of(bytes: &[u8]) -> Option<Self> {
        let opens = |at: usize| {
            let before = bytes[..at].trim_ascii_end();
            matches!(before.last(), Some(b',' | b':' | b'{' | b'['))
        };
        let quotes: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] == b'"').collect();
        if let Some(&last) = quotes.last() {
            let goes_on = bytes[last..].iter().any(|b| matches!(b, b',' | b':'));
            let closes = !goes_on && !quotes.iter().any(|&at| opens(at));
            return closes.then_some(Closer::Quote);
        }
        bytes
            .iter()
            .any(|b| matches!(b, b'}' | b']'))
            .then_some(Closer::Bracket)
    }
}

/// One generation's place in its grammar.
pub struct Constraint {
    matcher: Matcher,
    /// What each token can close, by id.
    closing: Arc<Vec<Option<Closer>>>,
    end_of_turn: TokenId,
}

impl Constraint {
    /// Keeps only the tokens the grammar allows next (the end-of-turn token once the
    /// grammar may end) in `logits`; an error when the grammar cannot go on.
    ///
    /// `winding_down`: the answer's tokens are nearly spent. A string or a number the
    /// grammar leaves open-ended would be cut off as invalid JSON, so where the grammar
    /// allows a token that closes something (a quote first, then a bracket), only
    /// those are left: the answer spends its last tokens closing what it opened. Where
    /// it allows none (a key or a tag the grammar writes), or where the answer could
    /// end here (free text, which a cut leaves whole), the grammar's choice stands.
    pub fn restrict(&mut self, logits: &mut [f32], winding_down: bool) -> Result<(), String> {
        let allowed: SimpleVob = self.matcher.compute_mask().map_err(|e| e.to_string())?;
        let allows = |closer| {
            (0..logits.len())
                .any(|id| self.closing[id] == Some(closer) && allowed.is_allowed(id as TokenId))
        };
        let only = if !winding_down || allowed.is_allowed(self.end_of_turn) {
            None
        } else if allows(Closer::Quote) {
            Some(Closer::Quote)
        } else if allows(Closer::Bracket) {
            Some(Closer::Bracket)
        } else {
            None
        };
        for (id, logit) in logits.iter_mut().enumerate() {
            let kept = allowed.is_allowed(id as TokenId)
                && only.is_none_or(|closer| self.closing[id] == Some(closer));
            if !kept {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Moves the grammar past `token`, which `restrict` allowed.
    pub fn advance(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// The grammar is complete and allows nothing more.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// The engine's error without the place in the generated grammar it points at (`at
/// 6(9):` and the grammar's lines), which would mean nothing to the client.
fn reason_only(error: &str) -> String {
    let first = error.lines().next().unwrap_or_default();
    match first.split_once("): ") {
        Some((place, reason)) if place.starts_with("at ") => reason.to_string(),
        _ => first.to_string(),
    }
}

/// The grammar, in llguidance's Lark dialect, that `request` holds its answer to.
fn grammar_for(request: &ChatRequest) -> Option<String> {
    let answer = match request.response_format {
        ResponseFormat::JsonObject => Some(any_object()),
        _ => request.response_format.schema(),
    };
    let tools = request.callable_tools();
    let forced: Option<Vec<&ToolSpec>> = match &request.tool_choice {
        ToolChoice::Required => Some(tools.iter().collect()),
        ToolChoice::Function(name) => {
            Some(tools.iter().filter(|tool| &tool.name == name).collect())
        }
        ToolChoice::Auto | ToolChoice::None => None,
    };
    let mut rules = Vec::new();
    let start = match forced {
        Some(forced) if !forced.is_empty() => {
            rules.extend(call_rules(&forced, several_calls(request)));
            "start: block more_blocks"
        }
        _ if tools.is_empty() => return Some(format!("start: {}", json_rule(&answer?))),
        _ => {
            rules.extend(call_rules(
                &tools.iter().collect::<Vec<_>>(),
                several_calls(request),
            ));
            // Free text until the model opens a call (a lazy rule ends at the first
            // opening tag), then the rest of the call under its tool's schema. Free
            // text can hold no opening tag, nor begin like a bare JSON call; a bare
            // call is one of the choices, held to the schemas like a tagged one.
            // Lexemes match greedily: text before a tag that could begin with `{` would
            // swallow a bare call, so it may not.
            rules.push(format!(
                "before_call[lazy]: /[ \\t\\n]*([^ \\t\\n\\[{{](?s:.*))?/ {}",
                lark_string(TOOL_CALL_OPEN)
            ));
            if let Some(schema) = &answer {
                rules.push(format!("answer: {}", json_rule(schema)));
                "start: answer | before_call call_rest"
            } else {
                rules.push(format!(
                    "PROSE: /(?s:.*)/ & ~/(?s:.*){}(?s:.*)/ & ~/[ \\t\\n]*[\\[{{](?s:.*)/",
                    regex::escape(TOOL_CALL_OPEN)
                ));
                "start: PROSE | call | before_call call_rest"
            }
        }
    };
    rules.insert(0, start.to_string());
    Some(rules.join("\n"))
}

/// Several calls in one answer only when the client asks for them. OpenAI's default
/// allows them, but a small model so allowed writes a second call, often the first
/// again, where one was meant; one call is still an answer the default permits.
fn several_calls(request: &ChatRequest) -> bool {
    request.parallel_tool_calls == Some(true)
}

/// `block` is one whole tagged call, `call_rest` a call whose opening tag is already
/// written, `more_blocks` what may follow a call (more calls when the client allows
/// several at once), and `call` the JSON object naming one of `tools`.
fn call_rules(tools: &[&ToolSpec], parallel: bool) -> Vec<String> {
    let mut rules = vec![
        format!(
            "block: {} call {}",
            lark_string(&format!("{TOOL_CALL_OPEN}\n")),
            lark_string(&format!("\n{TOOL_CALL_CLOSE}"))
        ),
        format!(
            "call_rest: \"\\n\" call {} more_blocks",
            lark_string(&format!("\n{TOOL_CALL_CLOSE}"))
        ),
        if parallel {
            "more_blocks: (\"\\n\" block)*".to_string()
        } else {
            "more_blocks: \"\"".to_string()
        },
        format!(
            "call: {}",
            (0..tools.len())
                .map(|index| format!("call_{index}"))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    ];
    for (index, tool) in tools.iter().enumerate() {
        // The name comes first, so the arguments are chosen knowing the tool.
        let opening = format!(
            "{{\"name\": {}, \"arguments\": ",
            Value::String(tool.name.clone())
        );
        rules.push(format!(
            "call_{index}: {} {} \"}}\"",
            lark_string(&opening),
            json_rule(&arguments_schema(&tool.parameters))
        ));
    }
    rules
}

/// A tool's parameters as a schema for an object: OpenAI lets a tool leave them out.
fn arguments_schema(parameters: &Value) -> Value {
    match parameters {
        Value::Object(schema) if schema.is_empty() => json!({"type": "object"}),
        Value::Object(schema) if !schema.contains_key("type") => {
            let mut schema = schema.clone();
            schema.insert("type".into(), json!("object"));
            Value::Object(schema)
        }
        Value::Object(_) => parameters.clone(),
        _ => json!({"type": "object"}),
    }
}

/// A `%json` rule for `schema`. JSON is written the way the prompt shows it
/// (`{"a": 1, "b": 2}`), with no free whitespace: a small model given room for
/// whitespace can spend its tokens on it. `oneOf` is held as `anyOf` (Pydantic writes
/// its tagged unions so, and their branches exclude each other); the call's schema
/// check after generation catches an answer that matches two.
fn json_rule(schema: &Value) -> String {
    let mut schema = schema.clone();
    cap_decimals(&mut schema);
    if let Value::Object(fields) = &mut schema {
        fields.insert(
            "x-guidance".into(),
            json!({"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": false,
                   "coerce_one_of": true}),
        );
    }
    format!("%json {schema}")
}

/// The most decimal places a number may take where its schema sets no `multipleOf`.
/// JSON's grammar lets a fraction run on for ever, and a small model sampling at the
/// default temperature does write a hundred digits; any number written within the cap
/// is still valid against the schema.
const DECIMAL_PLACES: i32 = 6;

/// Gives every `number` schema without a `multipleOf` one of 10^-`DECIMAL_PLACES`.
/// Values (`const`, `enum`, `default`, `examples`) are data, not schemas, and are left
/// as they are.
fn cap_decimals(schema: &mut Value) {
    match schema {
        Value::Object(fields) => {
            let is_number = match fields.get("type") {
                Some(Value::String(kind)) => kind == "number",
                Some(Value::Array(kinds)) => kinds.iter().any(|kind| kind == "number"),
                _ => false,
            };
            if is_number && !fields.contains_key("multipleOf") {
                fields.insert("multipleOf".into(), json!(10f64.powi(-DECIMAL_PLACES)));
            }
            for (key, value) in fields.iter_mut() {
                if !matches!(key.as_str(), "const" | "enum" | "default" | "examples") {
                    cap_decimals(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(cap_decimals),
        _ => {}
    }
}

/// `json_object`'s schema spelt out, so that its numbers, however deep, are capped
/// like a schema's (`cap_decimals`): `{"type": "object"}` leaves every value untyped.
fn any_object() -> Value {
    let value = json!({"$ref": "#/$defs/value"});
    json!({
        "type": "object",
        "additionalProperties": value,
        "$defs": {"value": {"anyOf": [
            {"type": "object", "additionalProperties": value},
            {"type": "array", "items": value},
            {"type": "string"},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
        ]}},
    })
}

/// A Lark string literal (Lark reads them as JSON strings).
fn lark_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Message, Role, Sampling};

    /// One token per byte, and 256 ends the turn.
    const END: u32 = 256;

    fn grammars() -> Grammars {
        Grammars::new(
            257,
            |id| match u8::try_from(id) {
                Ok(byte) => vec![byte],
                Err(_) => b"<|im_end|>".to_vec(),
            },
            |id| id == END,
            END,
            |bytes| bytes.iter().map(|&b| u32::from(b)).collect(),
        )
        .unwrap()
    }

    fn tool(name: &str, parameters: Value) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: None,
            parameters,
        }
    }

    fn tools() -> Vec<ToolSpec> {
        vec![
            tool(
                "get_weather",
                json!({"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}),
            ),
            tool("get_time", json!({})),
        ]
    }

    fn request(tools: Vec<ToolSpec>, choice: ToolChoice, format: ResponseFormat) -> ChatRequest {
        ChatRequest {
            model: "auto".into(),
            messages: vec![Message::text(Role::User, "Hi")],
            tools,
            tool_choice: choice,
            parallel_tool_calls: None,
            sampling: Sampling::default(),
            logprobs: None,
            response_format: format,
            raw_prompt: false,
            choices: 1,
        }
    }

    fn constraint(request: &ChatRequest) -> Constraint {
        grammars().for_request(request).unwrap().unwrap()
    }

    fn allowed(constraint: &mut Constraint) -> Vec<f32> {
        let mut logits = vec![0.0; 257];
        constraint.restrict(&mut logits, false).unwrap();
        logits
    }

    /// Feeds `text` a byte at a time; false at the first byte the grammar refuses.
    fn accepts(constraint: &mut Constraint, text: &str) -> bool {
        text.bytes().all(|byte| {
            !constraint.is_complete()
                && allowed(constraint)[usize::from(byte)].is_finite()
                && constraint.advance(u32::from(byte)).is_ok()
        })
    }

    fn can_end(constraint: &mut Constraint) -> bool {
        constraint.is_complete() || allowed(constraint)[END as usize].is_finite()
    }

    const WEATHER_CALL: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

    #[test]
    fn a_json_object_s_numbers_are_capped_at_any_depth() {
        let object = request(Vec::new(), ToolChoice::Auto, ResponseFormat::JsonObject);
        let nested = "{\"a\": [{\"b\": 1.123456";
        let mut answer = constraint(&object);
        assert!(accepts(&mut answer, nested));
        assert!(!accepts(&mut answer, "7"), "a seventh decimal");
        let mut answer = constraint(&object);
        assert!(accepts(
            &mut answer,
            "{\"a\": [true, null, \"x\", {}], \"b\": -2}"
        ));
        assert!(can_end(&mut answer));
        assert!(
            !accepts(&mut constraint(&object), "[1]"),
            "an object, not an array"
        );
    }

    #[test]
    fn a_required_call_names_an_offered_tool_and_follows_its_schema() {
        let required = request(tools(), ToolChoice::Required, ResponseFormat::Text);
        let mut call = constraint(&required);
        assert!(!can_end(&mut call), "an answer without a call");
        assert!(accepts(&mut call, WEATHER_CALL));
        assert!(can_end(&mut call));
        for wrong in [
            "Sure",
            "<tool_call>\n{\"name\": \"Paris\"",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"town\"",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": 4",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", ",
        ] {
            assert!(!accepts(&mut constraint(&required), wrong), "{wrong}");
        }
        let mut open = constraint(&required);
        assert!(accepts(&mut open, &WEATHER_CALL[..40]));
        assert!(!can_end(&mut open), "a call cut short");
    }

    #[test]
    fn a_named_call_can_only_be_that_tool() {
        let named = request(
            tools(),
            ToolChoice::Function("get_time".into()),
            ResponseFormat::Text,
        );
        assert!(!accepts(&mut constraint(&named), WEATHER_CALL));
        let mut call = constraint(&named);
        assert!(accepts(
            &mut call,
            "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"
        ));
        assert!(can_end(&mut call));
    }

    #[test]
    fn several_calls_only_when_the_client_asks_for_them() {
        let mut asked = request(tools(), ToolChoice::Required, ResponseFormat::Text);
        asked.parallel_tool_calls = Some(true);
        let mut calls = constraint(&asked);
        assert!(accepts(
            &mut calls,
            &format!("{WEATHER_CALL}\n{WEATHER_CALL}")
        ));
        for unsaid_or_refused in [None, Some(false)] {
            asked.parallel_tool_calls = unsaid_or_refused;
            let mut one = constraint(&asked);
            assert!(accepts(&mut one, WEATHER_CALL));
            assert!(!accepts(&mut one, "\n"));
        }
    }

    #[test]
    fn under_auto_text_is_free_until_a_call_opens() {
        let auto = request(tools(), ToolChoice::Auto, ResponseFormat::Text);
        let mut prose = constraint(&auto);
        assert!(accepts(
            &mut prose,
            "It is sunny in Paris, {mostly} <b>warm</b>."
        ));
        assert!(can_end(&mut prose));
        let mut tagged = constraint(&auto);
        assert!(accepts(
            &mut tagged,
            &format!("Let me check.\n{WEATHER_CALL}")
        ));
        assert!(can_end(&mut tagged));
        assert!(!accepts(
            &mut constraint(&auto),
            "Let me check.\n<tool_call>\n{\"name\": \"Paris\""
        ));
        let mut bare = constraint(&auto);
        assert!(accepts(
            &mut bare,
            "{\"name\": \"get_time\", \"arguments\": {}}"
        ));
        assert!(can_end(&mut bare));
        assert!(!accepts(&mut constraint(&auto), "{\"answer\": 4}"));
    }

    #[test]
    fn a_response_format_holds_the_answer_to_its_schema() {
        let schema = request(
            Vec::new(),
            ToolChoice::Auto,
            ResponseFormat::JsonSchema {
                name: "answer".into(),
                schema: json!({"type": "object", "properties": {"answer": {"type": "integer"}},
                               "required": ["answer"], "additionalProperties": false}),
                strict: true,
            },
        );
        let mut answer = constraint(&schema);
        assert!(accepts(&mut answer, "{\"answer\": 4}"));
        let share = request(
            Vec::new(),
            ToolChoice::Auto,
            ResponseFormat::JsonSchema {
                name: "share".into(),
                schema: json!({"type": "object", "properties": {"share": {"type": "number", "minimum": 0, "maximum": 1}},
                               "required": ["share"], "const_like": {"const": {"type": "number"}}}),
                strict: false,
            },
        );
        let mut short = constraint(&share);
        assert!(accepts(&mut short, "{\"share\": 0.123456}"));
        assert!(can_end(&mut short));
        assert!(
            !accepts(&mut constraint(&share), "{\"share\": 0.1234567"),
            "a fraction past the cap"
        );
        for bounds in [
            json!({}),
            json!({"minimum": -1e12, "maximum": 1e12}),
            json!({"exclusiveMinimum": 0, "maximum": 0.5}),
            json!({"minimum": 2.5}),
        ] {
            let mut number = json!({"type": "number"});
            number
                .as_object_mut()
                .unwrap()
                .extend(bounds.as_object().unwrap().clone());
            let format = ResponseFormat::JsonSchema {
                name: "n".into(),
                schema: json!({"type": "object", "properties": {"n": number}}),
                strict: false,
            };
            let request = request(Vec::new(), ToolChoice::Auto, format);
            assert!(grammars().for_request(&request).is_ok(), "{bounds}");
        }
        assert!(can_end(&mut answer));
        assert!(!accepts(&mut constraint(&schema), "{\"answer\": \"4\""));
        let object = request(Vec::new(), ToolChoice::Auto, ResponseFormat::JsonObject);
        assert!(!accepts(&mut constraint(&object), "[1]"));
        assert!(accepts(&mut constraint(&object), "{\"any\": [1, {}]}"));
        let plain = request(Vec::new(), ToolChoice::Auto, ResponseFormat::Text);
        assert!(grammars().for_request(&plain).unwrap().is_none());
        let hidden = request(tools(), ToolChoice::None, ResponseFormat::Text);
        assert!(grammars().for_request(&hidden).unwrap().is_none());
    }

    #[test]
    fn what_a_token_can_close() {
        for (token, closer) in [
            ("\"", Some(Closer::Quote)),
            ("ing\"", Some(Closer::Quote)),
            ("\"}", Some(Closer::Quote)),
            ("\",", None),
            ("\":", None),
            (", \"", None),
            ("\", \"", None),
            (": \"", None),
            ("}", Some(Closer::Bracket)),
            ("]}", Some(Closer::Bracket)),
            ("city", None),
        ] {
            assert_eq!(Closer::of(token.as_bytes()), closer, "{token}");
        }
    }

    #[test]
    fn winding_down_closes_what_is_open() {
        let schema = request(
            Vec::new(),
            ToolChoice::Auto,
            ResponseFormat::JsonSchema {
                name: "note".into(),
                schema: json!({"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}),
                strict: true,
            },
        );
        let mut note = constraint(&schema);
        assert!(accepts(&mut note, "{\"note\": \"a long"));
        let left = |constraint: &mut Constraint, winding_down| {
            let mut logits = vec![0.0; 257];
            constraint.restrict(&mut logits, winding_down).unwrap();
            (0..=255u8)
                .filter(|&b| logits[usize::from(b)].is_finite())
                .collect::<Vec<u8>>()
        };
        assert_eq!(left(&mut note, true), b"\"", "only the closing quote");
        assert!(left(&mut note, false).contains(&b'x'));
        assert!(accepts(&mut note, "\""));
        assert_eq!(left(&mut note, true), b"}", "then the closing brace");
        // Free text could end anywhere: winding down leaves it as it is.
        let mut prose = constraint(&request(tools(), ToolChoice::Auto, ResponseFormat::Text));
        assert!(accepts(&mut prose, "It is sunny"));
        assert!(left(&mut prose, true).contains(&b'x'));
    }

    #[test]
    fn a_schema_the_engine_cannot_compile_names_its_field() {
        let broken =
            json!({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": true}}});
        let mut offered = tools();
        offered.push(tool("f", broken.clone()));
        let with_tool = request(offered, ToolChoice::Auto, ResponseFormat::Text);
        let error = grammars().for_request(&with_tool).err().unwrap();
        assert_eq!(error.field, "tools[2].function.parameters");
        assert_eq!(
            error.message,
            "failed to compile JSON schema: Unimplemented keys: [\"uniqueItems\"]"
        );
        let with_format = request(
            Vec::new(),
            ToolChoice::Auto,
            ResponseFormat::JsonSchema {
                name: "x".into(),
                schema: broken,
                strict: false,
            },
        );
        let error = grammars().for_request(&with_format).err().unwrap();
        assert_eq!(error.field, "response_format.json_schema.schema");
    }
}
