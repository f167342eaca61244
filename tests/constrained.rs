//! Constrained decoding end to end, with the real local model at the default
//! temperature: every answer held to a JSON schema is valid against it, every forced
//! tool call is well formed, and constrained sequences share a batch with free ones
//! without changing their answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{user, weather_tool, TestServer};
use futures::future::join_all;
use serde_json::{json, Value};

/// How many answers each schema and each forced call must get right, all of them.
const REPEATS: usize = 20;

/// Thirty schemas of the kinds agents send: nested objects, arrays, enums, `anyOf`,
/// bounded numbers, patterned strings; each with the question it answers.
fn schemas() -> Vec<(&'static str, Value)> {
    let object = |properties: Value| {
        let required: Vec<String> = properties.as_object().unwrap().keys().cloned().collect();
        json!({"type": "object", "properties": properties, "required": required,
               "additionalProperties": false})
    };
    vec![
        (
            "What is the capital of France?",
            object(json!({"capital": {"type": "string", "maxLength": 40}})),
        ),
        (
            "How many legs does a spider have?",
            object(json!({"legs": {"type": "integer", "minimum": 0, "maximum": 20}})),
        ),
        (
            "Is the sky blue?",
            object(json!({"answer": {"type": "boolean"}})),
        ),
        (
            "Rate the movie Titanic from 1 to 5.",
            object(json!({"stars": {"type": "integer", "minimum": 1, "maximum": 5}})),
        ),
        (
            "What is the temperature of boiling water in Celsius?",
            object(json!({"celsius": {"type": "number", "minimum": -50, "maximum": 200}})),
        ),
        (
            "Classify the sentiment of: I love this phone.",
            object(json!({"sentiment": {"enum": ["positive", "negative", "neutral"]}})),
        ),
        (
            "Pick a primary colour.",
            object(json!({"colour": {"type": "string", "enum": ["red", "yellow", "blue"]}})),
        ),
        (
            "Name three fruits.",
            object(
                json!({"fruits": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 3, "maxItems": 3}}),
            ),
        ),
        (
            "List two even numbers.",
            object(
                json!({"numbers": {"type": "array", "items": {"type": "integer", "multipleOf": 2, "minimum": 0, "maximum": 100}, "minItems": 2, "maxItems": 2}}),
            ),
        ),
        (
            "Give a US ZIP code.",
            object(json!({"zip": {"type": "string", "pattern": "^[0-9]{5}$"}})),
        ),
        (
            "Give a date in 2024.",
            object(json!({"date": {"type": "string", "pattern": "^2024-[01][0-9]-[0-3][0-9]$"}})),
        ),
        (
            "Give a product code like AB-123.",
            object(json!({"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}})),
        ),
        (
            "Describe a person named Ann who is 30.",
            object(
                json!({"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "minimum": 0, "maximum": 130}}),
            ),
        ),
        (
            "Where is the Eiffel Tower?",
            object(
                json!({"place": object(json!({"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}}))}),
            ),
        ),
        (
            "Give the size of a box.",
            object(
                json!({"box": object(json!({"width": {"type": "number", "minimum": 0, "maximum": 100}, "height": {"type": "number", "minimum": 0, "maximum": 100}, "unit": {"enum": ["cm", "in"]}}))}),
            ),
        ),
        (
            "List two people with their ages.",
            object(
                json!({"people": {"type": "array", "minItems": 2, "maxItems": 2, "items": object(json!({"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}))}}),
            ),
        ),
        (
            "What is 2 + 2? Answer with a number or words.",
            object(
                json!({"result": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 100}, {"type": "string", "maxLength": 20}]}}),
            ),
        ),
        (
            "Is a tomato a fruit? You may say unknown.",
            object(json!({"verdict": {"anyOf": [{"type": "boolean"}, {"const": "unknown"}]}})),
        ),
        (
            "Give a shape: a circle with a radius or a square with a side.",
            object(json!({"shape": {"anyOf": [
                object(json!({"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0, "maximum": 10}})),
                object(json!({"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0, "maximum": 10}})),
            ]}})),
        ),
        (
            "What is the weather like? Give a summary and a temperature.",
            object(
                json!({"summary": {"type": "string", "maxLength": 60}, "temperature_c": {"type": "integer", "minimum": -40, "maximum": 50}, "rain": {"type": "boolean"}}),
            ),
        ),
        (
            "Plan a trip with two stops.",
            object(
                json!({"trip": object(json!({"stops": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "string", "maxLength": 25}}, "days": {"type": "integer", "minimum": 1, "maximum": 14}}))}),
            ),
        ),
        (
            "Give a priority for a server outage.",
            object(json!({"priority": {"type": "integer", "enum": [0, 1, 2, 3]}})),
        ),
        (
            "Summarise: the cat sat on the mat.",
            object(json!({"summary": {"type": "string", "minLength": 3, "maxLength": 50}})),
        ),
        (
            "Give an email address for Bob at example.com.",
            object(json!({"email": {"type": "string", "pattern": "^[a-z]{1,20}@example\\.com$"}})),
        ),
        (
            "Give a probability between 0 and 1 that it rains tomorrow.",
            object(json!({"probability": {"type": "number", "minimum": 0, "maximum": 1}})),
        ),
        (
            "Tag this text with up to three labels: cheap fast laptop.",
            object(
                json!({"labels": {"type": "array", "maxItems": 3, "items": {"enum": ["price", "speed", "quality", "size"]}}}),
            ),
        ),
        (
            "Give a hex colour code.",
            object(json!({"hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}})),
        ),
        (
            "Book a table: give a name, a party size and a time.",
            object(
                json!({"booking": object(json!({"name": {"type": "string", "maxLength": 20}, "party": {"type": "integer", "minimum": 1, "maximum": 12}, "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"}}))}),
            ),
        ),
        (
            "Give a matrix of two rows of two numbers.",
            object(
                json!({"matrix": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": -9, "maximum": 9}}}}),
            ),
        ),
        (
            "Answer yes or no with a reason: is water wet?",
            object(
                json!({"answer": {"enum": ["yes", "no"]}, "reason": {"type": "string", "maxLength": 60}}),
            ),
        ),
    ]
}

fn json_answer(question: &str, schema: &Value) -> Value {
    json!({
        "messages": user(question),
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "answer", "schema": schema, "strict": true}},
        "max_tokens": 200
    })
}

#[tokio::test]
async fn every_schema_yields_valid_json_every_time() {
    let server = TestServer::builder().slots(4).start().await;
    let schemas = schemas();
    assert_eq!(schemas.len(), 30);
    for (question, schema) in &schemas {
        let validator = jsonschema::validator_for(schema).unwrap();
        let answers =
            join_all((0..REPEATS).map(|_| server.chat(json_answer(question, schema)))).await;
        for (status, body) in answers {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
            let content = body["choices"][0]["message"]["content"].as_str().unwrap();
            let answer: Value = serde_json::from_str(content)
                .unwrap_or_else(|e| panic!("{question}: {e}: {content}"));
            assert!(
                validator.is_valid(&answer),
                "{question}: {answer} breaks {schema}"
            );
        }
    }
}

/// A free-form object has no bound of its own. The answer spends its last tokens
/// closing what it opened, which almost always ends it as an object; one nested deeper
/// than its last tokens can close is cut, and says so (`length`, as OpenAI's does).
#[tokio::test]
async fn a_json_object_answer_is_an_object() {
    let server = TestServer::builder().slots(4).start().await;
    let answers = join_all((0..REPEATS).map(|_| {
        server.chat(json!({
            "messages": user("Describe Paris in JSON."),
            "response_format": {"type": "json_object"},
            "max_tokens": 60
        }))
    }))
    .await;
    let mut whole = 0;
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["warden"]["route"], "local");
        if body["choices"][0]["finish_reason"] == "length" {
            continue;
        }
        whole += 1;
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        let answer: Value =
            serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
        assert!(answer.is_object(), "{answer}");
    }
    assert!(
        whole >= REPEATS * 3 / 4,
        "only {whole} of {REPEATS} ended whole"
    );
}

/// What openai-agents sends: a strict schema that refuses unknown keys.
fn strict_tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather", "description": "Get the current weather for a city", "strict": true,
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                           "unit": {"enum": ["celsius", "fahrenheit"]}},
                           "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {
            "name": "search_docs", "description": "Search the documentation", "strict": true,
            "parameters": {"type": "object", "properties": {"query": {"type": "string", "maxLength": 60},
                           "limit": {"type": "integer", "minimum": 1, "maximum": 10}},
                           "required": ["query", "limit"], "additionalProperties": false}}}
    ])
}

#[tokio::test]
async fn forced_calls_are_well_formed_every_time() {
    let server = TestServer::builder().slots(4).start().await;
    let tools = strict_tools();
    let validators: Vec<(String, jsonschema::Validator)> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| {
            (
                tool["function"]["name"].as_str().unwrap().to_string(),
                jsonschema::validator_for(&tool["function"]["parameters"]).unwrap(),
            )
        })
        .collect();
    for (choice, only) in [
        (json!("required"), None),
        (
            json!({"type": "function", "function": {"name": "search_docs"}}),
            Some("search_docs"),
        ),
    ] {
        let answers = join_all((0..REPEATS).map(|_| {
            server.chat(json!({
                "messages": user("What is the weather in Paris?"),
                "tools": tools,
                "tool_choice": choice,
                "parallel_tool_calls": false,
                "max_tokens": 100
            }))
        }))
        .await;
        for (status, body) in answers {
            assert_eq!(status, 200, "{body}");
            let choice = &body["choices"][0];
            assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
            let calls = choice["message"]["tool_calls"].as_array().unwrap();
            assert_eq!(calls.len(), 1, "{body}");
            let name = calls[0]["function"]["name"].as_str().unwrap();
            if let Some(only) = only {
                assert_eq!(name, only);
            }
            let (_, validator) = validators.iter().find(|(n, _)| n == name).unwrap();
            let arguments: Value =
                serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
            assert!(validator.is_valid(&arguments), "{arguments}");
            assert_eq!(body["warden"]["malformed_tool_call"], false);
        }
    }
}

#[tokio::test]
async fn under_auto_a_call_the_model_opens_is_never_malformed() {
    let server = TestServer::builder().slots(4).start().await;
    // A conversation where the model called the tool for each question before: it
    // follows suit about as often as not.
    let mut messages = Vec::new();
    for (at, (city, weather)) in [
        ("Paris", "18C, sunny"),
        ("Rome", "22C, clear"),
        ("Oslo", "3C, snow"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("call_{at}");
        messages.extend([
            json!({"role": "user", "content": format!("What is the weather in {city}?")}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
                "function": {"name": "get_weather", "arguments": json!({"city": city}).to_string()}}]}),
            json!({"role": "tool", "tool_call_id": id, "content": weather}),
            json!({"role": "assistant", "content": format!("It is {weather} in {city}.")}),
        ]);
    }
    messages.push(json!({"role": "user", "content": "What is the weather in Tokyo?"}));
    let answers = join_all((0..REPEATS).map(|_| {
        server.chat(json!({
            "messages": messages,
            "tools": weather_tool(),
            "max_tokens": 100,
            // OpenAI's default rather than the model's calmer one: the grammar is put
            // to the test by answers that vary, calls and prose alike.
            "temperature": 1
        }))
    }))
    .await;
    let mut calls = 0;
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["warden"]["malformed_tool_call"], false, "{body}");
        let message = &body["choices"][0]["message"];
        if let Some(call) = message["tool_calls"].as_array().and_then(|c| c.first()) {
            calls += 1;
            assert_eq!(call["function"]["name"], "get_weather");
            let arguments: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            assert!(arguments["city"].is_string(), "{arguments}");
        } else {
            let content = message["content"].as_str().unwrap_or_default();
            assert!(!content.contains("<tool_call>"), "{content}");
        }
    }
    assert!(
        calls > 0,
        "the model never called the tool in {REPEATS} tries"
    );
}

#[tokio::test]
async fn constrained_and_free_sequences_share_a_batch_each_with_its_own_answer() {
    let server = TestServer::builder().slots(4).start().await;
    let free =
        |question: &str| json!({"messages": user(question), "temperature": 0, "max_tokens": 24});
    let questions = ["What is the capital of France?", "Name a large animal."];
    let alone: Vec<Value> = {
        let mut answers = Vec::new();
        for question in questions {
            answers.push(server.chat(free(question)).await.1);
        }
        answers
    };
    let (_, schema) = &schemas()[12];
    let mixed = join_all(
        questions
            .iter()
            .map(|q| free(q))
            .chain((0..2).map(|_| json_answer("Describe a person named Ann who is 30.", schema)))
            .map(|request| server.chat(request)),
    )
    .await;
    let content = |body: &Value| {
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (index, answer) in alone.iter().enumerate() {
        assert_eq!(content(&mixed[index].1), content(answer));
    }
    let validator = jsonschema::validator_for(schema).unwrap();
    for (_, body) in &mixed[2..] {
        let answer: Value = serde_json::from_str(&content(body)).unwrap();
        assert!(validator.is_valid(&answer), "{answer}");
    }
}
