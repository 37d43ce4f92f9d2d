#!/usr/bin/env node
// Records one AI provider call with Budget Manager from Node.js: builds a UsageRecorded
// event, checks it against the committed JSON Schema (so a wrong event fails here, before
// anything is published, instead of in a dead-letter queue), publishes it to JetStream with
// its event id as Nats-Msg-Id on its NATS user's own subject, waits for the PubAck and
// prints the event id.
//
// Exit codes: 0 recorded; 2 a wrong argument or an event the schema refuses (nothing was
// published); 1 NATS refused or did not acknowledge the event.

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { parseArgs } from "node:util";

import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { connect } from "nats";

const USAGE = `usage: publish-usage.mjs --model MODEL [options]

Records one provider call as a UsageRecorded event on Budget Manager's event log.

  --provider NAME          provider (default: openai)
  --model NAME             model the call used (required)
  --kind KIND              chat, embedding, image or audio (default: chat)
  --input-tokens N         uncached input tokens (default: 0)
  --cached-input-tokens N  input tokens read from the provider's prompt cache (default: 0)
  --output-tokens N        visible output tokens (default: 0)
  --reasoning-tokens N     reasoning output tokens (default: 0)
  --cost USD               the call's cost as an exact decimal, e.g. 0.0123; without it
                           the event is recorded as unpriced
  --user ID, --project ID  who and what the call was for
  --tag KEY=VALUE          a tag (repeatable)

Environment: BUDGET_NATS_URL (default nats://127.0.0.1:4222), BUDGET_NATS_USER,
BUDGET_NATS_PASSWORD or BUDGET_NATS_PASSWORD_FILE (the file wins), BUDGET_SUBJECT_PREFIX
(default budget), BUDGET_EVENT_SCHEMA (default: the repository's
docs/schemas/UsageRecorded.v2.json).`;

const SCHEMA_PATH =
  process.env.BUDGET_EVENT_SCHEMA ??
  new URL("../../docs/schemas/UsageRecorded.v2.json", import.meta.url).pathname;
const PACKAGE = JSON.parse(readFileSync(new URL("package.json", import.meta.url), "utf8"));
// The consumers hold money as exact decimals: a JSON number would pass through a binary
// float here, so the cost travels as a decimal string (the schema allows both).
const DECIMAL = /^\d{1,13}(\.\d{1,40})?$/;

class Refused extends Error {}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      provider: { type: "string", default: "openai" },
      model: { type: "string" },
      kind: { type: "string", default: "chat" },
      "input-tokens": { type: "string", default: "0" },
      "cached-input-tokens": { type: "string", default: "0" },
      "output-tokens": { type: "string", default: "0" },
      "reasoning-tokens": { type: "string", default: "0" },
      cost: { type: "string" },
      user: { type: "string" },
      project: { type: "string" },
      tag: { type: "string", multiple: true, default: [] },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (values.model === undefined) throw new Refused("--model is required");
  if (values.cost !== undefined && !DECIMAL.test(values.cost)) {
    throw new Refused(`--cost ${values.cost}: give USD as a plain decimal, e.g. 0.0123`);
  }
  return values;
}

// A number the schema judges: "-5" stays -5 and "x" becomes NaN, which is no integer.
const count = (text) => Number(text);

function uuidv7() {
  // RFC 9562: 48 bits of Unix milliseconds, then version 7, variant 10 and random bits,
  // so ids sort by time as the Python producers' do (events.envelope.new_event_id).
  const bytes = randomBytes(16);
  bytes.writeUIntBE(Date.now(), 0, 6);
  bytes[6] = 0x70 | (bytes[6] & 0x0f);
  bytes[8] = 0x80 | (bytes[8] & 0x3f);
  return bytes.toString("hex").replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, "$1-$2-$3-$4-$5");
}

function buildEvent(options) {
  const tags = Object.fromEntries(
    options.tag.map((pair) => {
      const at = pair.indexOf("=");
      if (at < 1) throw new Refused(`--tag ${pair}: give KEY=VALUE`);
      return [pair.slice(0, at), pair.slice(at + 1)];
    }),
  );
  const priced =
    options.cost === undefined
      ? { unpriced_reason: "the Node.js publisher was given no cost" }
      : { cost: options.cost };
  return {
    type: "UsageRecorded",
    schema_version: 2,
    event_id: uuidv7(),
    occurred_at: new Date().toISOString(),
    producer: {
      service: PACKAGE.name,
      host: hostname(),
      pid: process.pid,
      library_version: PACKAGE.version,
    },
    provider: options.provider,
    model: options.model,
    kind: options.kind,
    usage: {
      input_uncached: count(options["input-tokens"]),
      input_cache_read: count(options["cached-input-tokens"]),
      output_text: count(options["output-tokens"]),
      output_reasoning: count(options["reasoning-tokens"]),
    },
    ...priced,
    ...(options.user === undefined ? {} : { user_id: options.user }),
    ...(options.project === undefined ? {} : { project_id: options.project }),
    tags,
  };
}

function loadValidator(schema) {
  const ajv = new Ajv2020({ allErrors: true });
  addFormats(ajv);
  // The contract's annotations for publishers (subject, headers): not validation keywords.
  ajv.addVocabulary(Object.keys(schema).filter((key) => key.startsWith("x-")));
  return ajv.compile(schema);
}

// An optional field is "anyOf: [the value's schema, null]": a wrong value fails both
// branches, and only the first says what is wrong with it.
function relevant(error, errors) {
  if (error.keyword === "anyOf") return false;
  const isNullBranch = error.keyword === "type" && error.params.type === "null";
  return !isNullBranch || !errors.some((e) => e !== error && e.instancePath === error.instancePath);
}

function describe(error) {
  const allowed = error.keyword === "enum" ? ` (${error.params.allowedValues.join(", ")})` : "";
  return `  ${error.instancePath || "/"}: ${error.message}${allowed}`;
}

function check(schema, event) {
  const validate = loadValidator(schema);
  if (validate(event)) return;
  const problems = validate.errors.filter((e, _, all) => relevant(e, all)).map(describe);
  throw new Refused(
    `the UsageRecorded event does not match ${SCHEMA_PATH}; nothing was published:\n` +
      problems.join("\n"),
  );
}

const natsUrl = () => process.env.BUDGET_NATS_URL ?? "nats://127.0.0.1:4222";

function password() {
  const file = process.env.BUDGET_NATS_PASSWORD_FILE;
  return file ? readFileSync(file, "utf8").trim() : process.env.BUDGET_NATS_PASSWORD;
}

async function publish(schema, event) {
  const user = process.env.BUDGET_NATS_USER;
  const prefix = process.env.BUDGET_SUBJECT_PREFIX ?? "budget";
  // Usage goes on the publishing credential's own subject (<prefix>.events.usage.recorded.
  // <user>), the only one a host credential may publish usage on; the consumers show that
  // user as the event's publisher. Without a user, the bare subject (publisher unknown).
  const subject = schema["x-nats-subject"]
    .replace("<prefix>", prefix)
    .replace(user ? "<user>" : ".<user>", user ?? "");
  const nc = await connect({
    servers: natsUrl(),
    user,
    pass: password(),
    // A host credential may read replies (here: the PubAck) in its own inbox only.
    inboxPrefix: user ? `_INBOX.${user}` : undefined,
    name: PACKAGE.name,
    reconnect: false,
  });
  try {
    // msgID is sent as the Nats-Msg-Id header: JetStream drops a re-send of the same event.
    const ack = await nc
      .jetstream()
      .publish(subject, JSON.stringify(event), { msgID: event.event_id, timeout: 10_000 });
    if (ack.duplicate) console.error(`event ${event.event_id} was already recorded`);
  } finally {
    await nc.close();
  }
}

function explain(error) {
  // nats.js says these by code; say what to check.
  const hints = {
    CONNECTION_REFUSED: `no NATS server answers at ${natsUrl()} (BUDGET_NATS_URL)`,
    AUTHORIZATION_VIOLATION:
      "the NATS server refused the credential (BUDGET_NATS_USER and BUDGET_NATS_PASSWORD" +
      " or BUDGET_NATS_PASSWORD_FILE)",
    PERMISSIONS_VIOLATION:
      `${error.message}: a host credential records usage on its own subject (its` +
      " BUDGET_NATS_USER) under its stack's subject prefix only (BUDGET_SUBJECT_PREFIX)",
    503:
      "no stream stores this subject: is the stack prepared (budget migrate) and" +
      " BUDGET_SUBJECT_PREFIX the stack's?",
  };
  return hints[error.code] ?? error.message;
}

async function main() {
  let schema, event;
  try {
    const options = parseOptions(process.argv.slice(2));
    schema = JSON.parse(readFileSync(SCHEMA_PATH, "utf8"));
    event = buildEvent(options);
    check(schema, event);
  } catch (error) {
    console.error(`publish-usage: ${error.message}`);
    if (error.code?.startsWith("ERR_PARSE_ARGS")) console.error(USAGE);
    return 2;
  }
  try {
    await publish(schema, event);
  } catch (error) {
    console.error(`publish-usage: event ${event.event_id} not recorded: ${explain(error)}`);
    return 1;
  }
  console.log(event.event_id);
  return 0;
}

process.exitCode = await main();
