// The official OpenAI Node SDK, unchanged, against warden.
//
// `node openai_node.cjs BASE_URL API_KEY`: a plain and a streamed chat, forced tool
// calls (required and named) at the default temperature twenty times each, and a plain
// and a streamed response through the Responses API. Exits non-zero on any mismatch.
//
// `node openai_node.cjs BASE_URL API_KEY RUN_ID`: one chat request with the SDK's
// default retry rules (two retries), counting every HTTP attempt; prints
// `STATUS CODE ATTEMPTS` for the refusal it finally raised.
"use strict";

const assert = require("node:assert/strict");
const OpenAI = require("openai");

const WEATHER = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather for a city",
    strict: true,
    parameters: {
      type: "object",
      properties: { city: { type: "string", maxLength: 40 } },
      required: ["city"],
      additionalProperties: false,
    },
  },
};

async function conformance(client) {
  const question = [{ role: "user", content: "What is the capital of France?" }];
  const plain = await client.chat.completions.create({ model: "auto", messages: question, temperature: 0 });
  const answer = plain.choices[0].message.content;
  assert.match(answer, /Paris/);
  const stream = await client.chat.completions.create({
    model: "auto", messages: question, temperature: 0, stream: true,
  });
  let streamed = "";
  for await (const chunk of stream) {
    streamed += chunk.choices[0]?.delta?.content ?? "";
  }
  assert.equal(streamed, answer);

  const weather = [{ role: "user", content: "What is the weather in Paris?" }];
  for (const choice of ["required", { type: "function", function: { name: "get_weather" } }]) {
    for (let i = 0; i < 20; i++) {
      const reply = await client.chat.completions.create({
        model: "auto", messages: weather, tools: [WEATHER], tool_choice: choice, max_tokens: 40,
      });
      assert.equal(reply.choices[0].finish_reason, "tool_calls");
      const call = reply.choices[0].message.tool_calls[0];
      assert.equal(call.function.name, "get_weather");
      const args = JSON.parse(call.function.arguments);
      assert.deepEqual(Object.keys(args), ["city"]);
      assert.equal(typeof args.city, "string");
    }
  }

  const response = await client.responses.create({ model: "auto", input: question[0].content, temperature: 0 });
  assert.equal(response.status, "completed");
  assert.equal(response.output_text, answer);
  const events = await client.responses.create({
    model: "auto", input: question[0].content, temperature: 0, stream: true,
  });
  let deltas = "";
  let completed = null;
  for await (const event of events) {
    if (event.type === "response.output_text.delta") deltas += event.delta;
    if (event.type === "response.completed") completed = event.response;
  }
  assert.equal(deltas, answer);
  assert.equal(completed.output[0].content[0].text, answer);
}

async function refusal(baseURL, apiKey, runId) {
  let attempts = 0;
  const client = new OpenAI({
    baseURL, apiKey, maxRetries: 2,
    fetch: (url, init) => { attempts += 1; return fetch(url, init); },
  });
  try {
    await client.chat.completions.create({
      model: "auto", messages: [{ role: "user", content: "Say hi." }], max_tokens: 2,
      metadata: { run_id: runId },
    });
  } catch (error) {
    if (error instanceof OpenAI.APIError) {
      console.log(`${error.status} ${error.code} ${attempts}`);
      return;
    }
    throw error;
  }
  throw new Error("the request was answered, not refused");
}

async function main() {
  const [base, apiKey, runId] = process.argv.slice(2);
  const baseURL = `${base}/v1`;
  if (runId !== undefined) {
    await refusal(baseURL, apiKey, runId);
  } else {
    await conformance(new OpenAI({ baseURL, apiKey, maxRetries: 0 }));
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
