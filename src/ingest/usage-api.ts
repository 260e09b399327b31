import { type Static, Type } from "typebox";
import { fromUnits, toUnits } from "../decimal.ts";
import type { Settings } from "../settings.ts";
import type { UsageRecord } from "./record.ts";

const Id = (description: string) => Type.String({ minLength: 1, maxLength: 256, description });
const Name = (description: string) => Type.String({ minLength: 1, maxLength: 128, description });
const Count = (description: string) => Type.Integer({ minimum: 0, maximum: 1e12, description });

/** The usage event format of the README (one LLM call). */
export const UsageEventSchema = Type.Object(
  {
    event_type: Type.Literal("usage"),
    timestamp: Type.Number({ description: "the call's start time in Unix seconds (not milliseconds)" }),
    customer_id: Id("the customer billed for the call"),
    model: Name("model name, e.g. gpt-4o"),
    provider: Type.Optional(Name("provider, e.g. openai")),
    tokens_input: Count("all prompt tokens, cache reads and writes included"),
    tokens_output: Count("completion tokens, reasoning included"),
    total_tokens: Count("at least tokens_input + tokens_output"),
    tokens_cache_read: Type.Optional(Count("part of tokens_input read from the prompt cache")),
    tokens_cache_write: Type.Optional(Count("part of tokens_input written to the prompt cache")),
    tokens_reasoning: Type.Optional(Count("part of tokens_output spent on reasoning")),
    cost_usd: Type.Number({ minimum: 0, description: "cost of the call in USD" }),
    request_id: Id("unique id of the call: the idempotency key"),
    api_key_hash: Type.Optional(
      Type.String({ maxLength: 128, description: "a hash of the API key, never the key" }),
    ),
    status: Type.Optional(Type.Union([Type.Literal("success"), Type.Literal("failure")])),
    call_type: Type.Optional(Name("e.g. acompletion")),
    metadata: Type.Optional(
      Type.Object(
        {
          user_id: Type.Optional(Type.String({ maxLength: 256 })),
          team_id: Type.Optional(Type.String({ maxLength: 256 })),
          org_id: Type.Optional(Type.String({ maxLength: 256 })),
        },
        {
          additionalProperties: Type.Union([Type.String({ maxLength: 1024 }), Type.Number(), Type.Boolean()]),
        },
      ),
    ),
  },
  { additionalProperties: false },
);
export type UsageEvent = Static<typeof UsageEventSchema>;

export const UsageBatchSchema = Type.Object(
  { events: Type.Array(UsageEventSchema, { minItems: 1 }) },
  { additionalProperties: false },
);
export type UsageBatch = Static<typeof UsageBatchSchema>;

export const IngestResultSchema = Type.Object({
  accepted: Type.Integer({ description: "new events stored" }),
  duplicates: Type.Integer({ description: "events already stored with the same content" }),
  conflicts: Type.Integer({ description: "request ids already stored with different content (first kept)" }),
  not_billable: Type.Optional(Type.Integer()),
  rejected: Type.Optional(Type.Integer()),
  errors: Type.Optional(
    Type.Array(Type.Object({ index: Type.Integer(), path: Type.String(), message: Type.String() })),
  ),
});

export const ValidationErrorSchema = Type.Object({
  statusCode: Type.Integer(),
  error: Type.String(),
  message: Type.String(),
  errors: Type.Array(
    Type.Object({ index: Type.Optional(Type.Integer()), path: Type.String(), message: Type.String() }),
  ),
});

export interface FieldError {
  index?: number;
  path: string;
  message: string;
}

/** Largest believable cost of one call; anything above is a unit mistake (cents, micro-dollars). */
export const MAX_COST_USD = 10_000;

/** Rules a JSON schema cannot say: time windows, token arithmetic, plausible cost. */
export function checkTimestamp(
  ts: number,
  ingest: Settings["ingest"],
  now = Date.now() / 1000,
): string | null {
  if (!Number.isFinite(ts)) return "must be a finite number of Unix seconds";
  if (ts > 1e11) return "looks like milliseconds: send Unix seconds (divide by 1000)";
  if (ts > now + ingest.maxFutureSeconds) return `lies more than ${ingest.maxFutureSeconds} s in the future`;
  if (ts < now - ingest.maxAgeDays * 86_400) return `lies more than ${ingest.maxAgeDays} days in the past`;
  return null;
}

export function semanticErrors(e: UsageEvent, ingest: Settings["ingest"], prefix: string): FieldError[] {
  const errors: FieldError[] = [];
  const ts = checkTimestamp(e.timestamp, ingest);
  if (ts) errors.push({ path: `${prefix}/timestamp`, message: ts });
  if (e.total_tokens < e.tokens_input + e.tokens_output) {
    errors.push({ path: `${prefix}/total_tokens`, message: "must be at least tokens_input + tokens_output" });
  }
  const cached = (e.tokens_cache_read ?? 0) + (e.tokens_cache_write ?? 0);
  if (cached > e.tokens_input) {
    errors.push({
      path: `${prefix}/tokens_cache_read`,
      message: "tokens_cache_read + tokens_cache_write must not exceed tokens_input (they are part of it)",
    });
  }
  if ((e.tokens_reasoning ?? 0) > e.tokens_output) {
    errors.push({
      path: `${prefix}/tokens_reasoning`,
      message: "must not exceed tokens_output (it is part of it)",
    });
  }
  if (!Number.isFinite(e.cost_usd) || e.cost_usd > MAX_COST_USD) {
    errors.push({ path: `${prefix}/cost_usd`, message: `must be a finite USD amount up to ${MAX_COST_USD}` });
  }
  return errors;
}

/** A validated API event as a ledger record. */
export function fromUsageEvent(e: UsageEvent): UsageRecord {
  const { user_id, team_id, org_id, ...rest } = e.metadata ?? {};
  return {
    requestId: e.request_id,
    timestamp: Math.round(e.timestamp * 1000) / 1000,
    customerId: e.customer_id,
    userId: user_id ?? null,
    teamId: team_id ?? null,
    orgId: org_id ?? null,
    apiKeyHash: e.api_key_hash ?? null,
    model: e.model,
    provider: e.provider ?? null,
    callType: e.call_type ?? null,
    status: e.status ?? "success",
    tokensInput: e.tokens_input,
    tokensOutput: e.tokens_output,
    tokensCached: e.tokens_cache_read ?? 0,
    tokensCacheWrite: e.tokens_cache_write ?? 0,
    tokensReasoning: e.tokens_reasoning ?? 0,
    totalTokens: e.total_tokens,
    costUsd: fromUnits(toUnits(e.cost_usd)),
    costSource: "reported",
    billable: e.tokens_input + e.tokens_output > 0,
    notBillableReason: e.tokens_input + e.tokens_output > 0 ? null : "no tokens",
    source: "api",
    metadata: rest,
  };
}
