// A tiny Node.js agent: its own prompt, its own tool, the official `openai` package. It holds no
// autoretrain code and sends no autoretrain header: pointing its base URL at the gateway is the
// only change, and the gateway stitches its calls into one run (each call extends the last).
//
//   OPENAI_BASE_URL=http://127.0.0.1:8100/v1 node agent.mjs "How many words are in 'a b c'?"
//
// Prints {"final_answer": ..., "tool_calls": n} as JSON on stdout.

import OpenAI from "openai";

const SYSTEM_PROMPT =
  "You are a text helper. Use the `letter_count` tool to count letters, then answer briefly.";

const TOOLS = [
  {
    type: "function",
    function: {
      name: "letter_count",
      description: "Count the letters (a to z, any case) in a text.",
      parameters: {
        type: "object",
        properties: { text: { type: "string" } },
        required: ["text"],
      },
    },
  },
];

function letterCount({ text }) {
  return String((String(text).match(/[a-z]/gi) || []).length);
}

async function main() {
  const question = process.argv.slice(2).join(" ") || "How many letters are in 'hello world'?";
  const client = new OpenAI({
    baseURL: process.env.OPENAI_BASE_URL || "http://127.0.0.1:8100/v1",
    apiKey: process.env.OPENAI_API_KEY || "unused",
    maxRetries: 1,
  });
  const model = process.env.AGENT_MODEL || "primary";
  const messages = [
    { role: "system", content: SYSTEM_PROMPT },
    { role: "user", content: question },
  ];
  let toolCalls = 0;
  for (let turn = 0; turn < 4; turn++) {
    const reply = await client.chat.completions.create({ model, messages, tools: TOOLS });
    const message = reply.choices[0].message;
    messages.push(message);
    if (!message.tool_calls || message.tool_calls.length === 0) {
      console.log(JSON.stringify({ final_answer: message.content, tool_calls: toolCalls }));
      return;
    }
    for (const call of message.tool_calls) {
      toolCalls += 1;
      let content;
      try {
        content = letterCount(JSON.parse(call.function.arguments || "{}"));
      } catch (err) {
        content = `error: ${err.message}`;
      }
      messages.push({ role: "tool", tool_call_id: call.id, content });
    }
  }
  console.log(JSON.stringify({ final_answer: null, tool_calls: toolCalls }));
}

main().catch((err) => {
  console.error(`node-agent: ${err.message}`);
  process.exit(1);
});
