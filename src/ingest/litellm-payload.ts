import { fromUnits, toUnits } from "../decimal.ts";
import type { PriceBook } from "../pricing.ts";
import { priceCall } from "../pricing.ts";
import type { AttributionSource, Settings } from "../settings.ts";
import type { UsageRecord, UsageSource } from "./record.ts";
import { checkTimestamp, MAX_COST_USD } from "./usage-api.ts";

/** The parts of LiteLLM's StandardLoggingPayload the ledger reads (litellm/types/utils.py). */
export interface StandardLoggingPayload {
  id?: unknown;
  litellm_call_id?: unknown;
  trace_id?: unknown;
  call_type?: unknown;
  status?: unknown;
  response_cost?: unknown;
  prompt_tokens?: unknown;
  completion_tokens?: unknown;
  total_tokens?: unknown;
  startTime?: unknown;
  model?: unknown;
  model_group?: unknown;
  model_id?: unknown;
  custom_llm_provider?: unknown;
  end_user?: unknown;
  cache_hit?: unknown;
  request_tags?: unknown;
  metadata?: Record<string, unknown> | null;
  [key: string]: unknown;
}

export type PayloadResult =
  | { ok: true; record: UsageRecord }
  | { ok: false; requestId: string | null; reason: string };

const text = (v: unknown, max = 256): string | null =>
  typeof v === "string" && v.length > 0 ? v.slice(0, max) : typeof v === "number" ? String(v) : null;

function count(v: unknown): number | null {
  if (v === undefined || v === null) return 0;
  const n = typeof v === "string" && v.trim() !== "" ? Number(v) : v;
  return typeof n === "number" && Number.isInteger(n) && n >= 0 ? n : null;
}

function obj(v: unknown): Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

/**
 * LiteLLM reports the master key's calls (and keys without a user) as user "default_user_id": a
 * placeholder, never a customer, so it must not be billed as one.
 */
const LITELLM_PLACEHOLDER_USER = "default_user_id";
const keyUser = (v: unknown): string | null => {
  const user = text(v);
  return user === LITELLM_PLACEHOLDER_USER ? null : user;
};

/** Who pays for the call, by the configured attribution order. */
export function resolveCustomer(p: StandardLoggingPayload, order: AttributionSource[]): string | null {
  const meta = obj(p.metadata);
  for (const source of order) {
    const v =
      source === "end_user"
        ? (text(p.end_user) ?? text(meta.user_api_key_end_user_id))
        : source === "user_id"
          ? keyUser(meta.user_api_key_user_id)
          : source === "team_id"
            ? text(meta.user_api_key_team_id)
            : source === "org_id"
              ? text(meta.user_api_key_org_id)
              : text(meta.user_api_key_alias);
    if (v) return v;
  }
  return null;
}

/**
 * Cached, cache-write and reasoning tokens from `metadata.usage_object`. LiteLLM normalises usage to
 * OpenAI's convention (cache reads are part of prompt_tokens); Anthropic's raw
 * cache_creation_input_tokens are used when the normalised detail is absent.
 */
function tokenDetails(usage: Record<string, unknown>): {
  cached: number;
  cacheWrite: number;
  reasoning: number;
} {
  const prompt = obj(usage.prompt_tokens_details);
  const completion = obj(usage.completion_tokens_details);
  return {
    cached: count(prompt.cached_tokens ?? usage.cache_read_input_tokens) ?? 0,
    cacheWrite: count(prompt.cache_creation_tokens ?? usage.cache_creation_input_tokens) ?? 0,
    reasoning: count(completion.reasoning_tokens) ?? 0,
  };
}

export interface PayloadContext {
  settings: Settings["ingest"];
  prices: PriceBook;
  source: UsageSource;
  /**
   * Skip the INGEST_MAX_AGE_DAYS window. That window guards live traffic against clock and unit
   * mistakes; a backfill replays history on purpose, from LiteLLM's own SpendLogs timestamps.
   */
  ignoreMaxAge?: boolean;
}

/** Maps one StandardLoggingPayload to a ledger record, or says why it cannot be billed at all. */
export function fromLiteLLMPayload(p: StandardLoggingPayload, ctx: PayloadContext): PayloadResult {
  if (typeof p !== "object" || p === null || Array.isArray(p)) {
    return { ok: false, requestId: null, reason: "payload is not a JSON object" };
  }
  const requestId = text(p.id) ?? text(p.litellm_call_id);
  if (!requestId)
    return { ok: false, requestId: null, reason: "no request id: neither id nor litellm_call_id is set" };
  const fail = (reason: string): PayloadResult => ({ ok: false, requestId, reason });
  const customerId = resolveCustomer(p, ctx.settings.attribution);
  if (!customerId) {
    return fail(
      `no customer: none of ${ctx.settings.attribution.join(", ")} is set on the call ` +
        '(send "user" in the request or use a virtual key with a user_id or team_id)',
    );
  }
  const start = typeof p.startTime === "number" ? p.startTime : Number(p.startTime);
  const tsError = checkTimestamp(
    start,
    ctx.ignoreMaxAge ? { ...ctx.settings, maxAgeDays: Number.POSITIVE_INFINITY } : ctx.settings,
  );
  if (tsError) return fail(`startTime ${tsError}`);
  const input = count(p.prompt_tokens);
  const output = count(p.completion_tokens);
  const total = count(p.total_tokens);
  if (input === null || output === null || total === null)
    return fail("token counts must be non-negative integers");
  const meta = obj(p.metadata);
  const details = tokenDetails(obj(meta.usage_object));
  // Anthropic's cache writes may come on top of prompt_tokens: keep the parts within the input.
  const cached = Math.min(details.cached, input);
  const cacheWrite = Math.min(details.cacheWrite, input - cached);
  const model = text(p.model_group, 128) ?? text(p.model, 128);
  if (!model) return fail("no model: neither model_group nor model is set");
  const status = p.status === "failure" ? "failure" : "success";
  const cacheHit = p.cache_hit === true || p.cache_hit === "True" || p.cache_hit === "true";
  const rawCost = p.response_cost === undefined || p.response_cost === null ? 0 : Number(p.response_cost);
  if (!Number.isFinite(rawCost) || rawCost < 0 || rawCost > MAX_COST_USD) {
    return fail(`response_cost ${String(p.response_cost)} is not a plausible USD amount`);
  }
  let costUsd = fromUnits(toUnits(rawCost));
  let costSource: UsageRecord["costSource"] = "reported";
  const tokens = input + output;
  if (rawCost === 0 && tokens > 0 && !cacheHit) {
    // LiteLLM reports $0 for some streamed calls that used tokens: price them from config.yaml.
    const price = ctx.prices.get(model) ?? ctx.prices.get(text(p.model, 128) ?? undefined);
    if (price) {
      costUsd = priceCall(price, { input, output, cached, cacheWrite });
      costSource = "priced";
    }
  }
  let notBillableReason: string | null = null;
  if (tokens === 0) notBillableReason = status === "failure" ? "failed call without tokens" : "no tokens";
  else if (cacheHit && !ctx.settings.billCacheHits)
    notBillableReason = "LiteLLM cache hit (BILL_CACHE_HITS=false)";
  const tags = Array.isArray(p.request_tags)
    ? p.request_tags.filter((t) => typeof t === "string").slice(0, 20)
    : [];
  return {
    ok: true,
    record: {
      requestId,
      timestamp: Math.round(start * 1000) / 1000,
      customerId,
      userId: keyUser(meta.user_api_key_user_id),
      teamId: text(meta.user_api_key_team_id),
      orgId: text(meta.user_api_key_org_id),
      apiKeyHash: text(meta.user_api_key_hash, 128),
      model,
      provider: text(p.custom_llm_provider, 64),
      callType: text(p.call_type, 64),
      status,
      tokensInput: input,
      tokensOutput: output,
      tokensCached: cached,
      tokensCacheWrite: cacheWrite,
      tokensReasoning: Math.min(details.reasoning, output),
      totalTokens: Math.max(total, tokens),
      costUsd,
      costSource,
      billable: notBillableReason === null,
      notBillableReason,
      source: ctx.source,
      metadata: {
        ...(text(p.litellm_call_id) ? { litellm_call_id: text(p.litellm_call_id) } : {}),
        ...(text(p.trace_id) ? { trace_id: text(p.trace_id) } : {}),
        ...(text(p.model_id) ? { model_id: text(p.model_id) } : {}),
        ...(cacheHit ? { cache_hit: true } : {}),
        ...(tags.length ? { request_tags: tags } : {}),
        ...(text(meta.user_api_key_alias) ? { key_alias: text(meta.user_api_key_alias) } : {}),
        ...(text(p.model) && text(p.model) !== model ? { provider_model: text(p.model, 128) } : {}),
      },
    },
  };
}
