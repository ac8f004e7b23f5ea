// Drives `epserve serve` with the official `openai` npm package:
//   node openai_client.mjs BASE_URL API_KEY MODEL
// a completion, a chat completion, a streamed chat completion (usage chunk,
// role first, same text as the non-streamed greedy answer) and an unknown
// model (404 NotFoundError). Prints "ok"/"FAIL" lines; exit 1 on any FAIL.
import OpenAI from 'openai';

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey, maxRetries: 0, timeout: 60000 });
let failures = 0;
function check(cond, what, detail) {
  console.log(`${cond ? 'ok  ' : 'FAIL'}  ${what}${cond ? '' : ': ' + JSON.stringify(detail)}`);
  if (!cond) failures++;
}
function usageOk(u, completion) {
  return u && u.prompt_tokens > 0 && u.completion_tokens === completion &&
    u.total_tokens === u.prompt_tokens + u.completion_tokens;
}

// A completion: ignore_eos makes the length exact.
const c = await client.completions.create({
  model, prompt: 'The quick brown fox', max_tokens: 7, temperature: 0, ignore_eos: true,
});
check(c.object === 'text_completion' && c.id.startsWith('cmpl-') && c.model === model,
  'completion: object, id, model', c);
check(typeof c.choices[0].text === 'string' && c.choices[0].text.length > 0,
  'completion: text', c.choices[0]);
check(c.choices[0].finish_reason === 'length', 'completion: finish_reason length', c.choices[0]);
check(usageOk(c.usage, 7), 'completion: usage 7 generated, total = prompt + completion', c.usage);

// The same prompt as token ids gives the same usage when the ids are its encoding;
// here: an id prompt counts its ids.
const ids = await client.completions.create({ model, prompt: [11, 22, 33, 44], max_tokens: 3, temperature: 0, ignore_eos: true });
check(ids.usage.prompt_tokens === 4 && ids.usage.completion_tokens === 3, 'completion of token ids: usage 4 + 3', ids.usage);

// A chat completion.
const messages = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say hi' }];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 6, temperature: 0, ignore_eos: true });
const msg = chat.choices[0].message;
check(chat.object === 'chat.completion' && chat.id.startsWith('chatcmpl-'), 'chat: object, id', chat);
check(msg.role === 'assistant' && typeof msg.content === 'string', 'chat: assistant message', msg);
check(usageOk(chat.usage, 6), 'chat: usage 6 generated', chat.usage);

// The same chat streamed: role first, finish_reason last, usage chunk, same text.
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 6, temperature: 0, ignore_eos: true, stream: true,
  stream_options: { include_usage: true },
});
let text = '', first = null, finish = null, usage = null, n = 0;
for await (const chunk of stream) {
  check(chunk.object === 'chat.completion.chunk' && chunk.id === (first?.id ?? chunk.id),
    `stream chunk ${n}: object and one id`, chunk);
  if (!first) first = chunk;
  n++;
  if (chunk.usage) usage = chunk.usage;
  const ch = chunk.choices[0];
  if (!ch) continue;
  text += ch.delta?.content ?? '';
  if (ch.finish_reason) finish = ch.finish_reason;
}
check(first?.choices[0]?.delta?.role === 'assistant', 'stream: first chunk has delta.role', first);
check(finish === 'length', 'stream: final finish_reason length', finish);
check(usageOk(usage, 6), 'stream: usage chunk 6 generated', usage);
check(text === msg.content, 'stream: same greedy text as the non-streamed chat', { text, content: msg.content });

// Errors surface as the client's typed errors.
try {
  await client.completions.create({ model: 'no-such-model', prompt: 'x', max_tokens: 1 });
  check(false, 'unknown model: refused', 'accepted');
} catch (e) {
  check(e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found',
    'unknown model: NotFoundError 404 model_not_found', { status: e.status, code: e.code, message: e.message });
}
try {
  await new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: apiKey + 'x', maxRetries: 0 })
    .completions.create({ model, prompt: 'x', max_tokens: 1 });
  check(false, 'wrong key: refused', 'accepted');
} catch (e) {
  check(e instanceof OpenAI.AuthenticationError && e.status === 401, 'wrong key: AuthenticationError 401',
    { status: e.status, message: e.message });
}
const models = await client.models.list();
check(models.data.length === 1 && models.data[0].id === model, 'models.list: the served model', models.data);
process.exit(failures ? 1 : 0);
