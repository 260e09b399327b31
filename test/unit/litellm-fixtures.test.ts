import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import {
  fromLiteLLMPayload,
  type PayloadContext,
  type StandardLoggingPayload,
} from "../../src/ingest/litellm-payload.ts";
import type { UsageRecord } from "../../src/ingest/record.ts";
import { loadConfiguredModels, PriceBook } from "../../src/pricing.ts";
import { loadSettings } from "../../src/settings.ts";
import { MASTER_KEY } from "../support/litellm-proxy.ts";

/**
 * StandardLoggingPayloads captured from the real LiteLLM proxy (1.106.12) by
 * `node scripts/capture-litellm-fixtures.ts`, mapped with the service's own mapping code.
 * Tokens and costs are fixed by the fake upstream's usage directives and config.yaml's prices, so they
 * are asserted literally; ids and start times change with every capture and are read from the file.
 */
const FIXTURES = ["nonstream", "stream", "cached", "failure", "embedding"] as const;
type Fixture = (typeof FIXTURES)[number];

const raw = (name: Fixture): string =>
  readFileSync(new URL(`../fixtures/litellm/${name}.json`, import.meta.url), "utf8");
const load = (name: Fixture): StandardLoggingPayload => JSON.parse(raw(name)) as StandardLoggingPayload;

const ctx: PayloadContext = {
  settings: loadSettings({}).ingest,
  prices: new PriceBook(loadConfiguredModels("config.yaml")),
  source: "litellm",
  // The fixtures are snapshots: they outlive INGEST_MAX_AGE_DAYS.
  ignoreMaxAge: true,
};

function mapped(p: StandardLoggingPayload): UsageRecord {
  const r = fromLiteLLMPayload(p, ctx);
  if (!r.ok) throw new Error(`fixture rejected: ${r.reason}`);
  return r.record;
}

/** What every captured call shares: the master key, the OpenAI SDK, the call's own ids and start time. */
function expectCommon(p: StandardLoggingPayload, r: UsageRecord): void {
  expect(r.timestamp).toBe(Math.round(Number(p.startTime) * 1000) / 1000);
  expect(r.source).toBe("litellm");
  expect(r.provider).toBe("openai");
  // LiteLLM's placeholders for master-key calls: no user, and a fixed "hash".
  expect(r.userId).toBeNull();
  expect(r.apiKeyHash).toBe("litellm_proxy_master_key");
  expect(r.teamId).toBeNull();
  expect(r.orgId).toBeNull();
  expect(r.metadata).toMatchObject({
    litellm_call_id: p.litellm_call_id,
    trace_id: p.trace_id,
    model_id: p.model_id,
    request_tags: ["User-Agent: OpenAI", "User-Agent: OpenAI/JS 7.59.0"],
  });
}

describe("LiteLLM payloads captured from the real proxy", () => {
  it("contain no raw key", () => {
    for (const name of FIXTURES) {
      const text = raw(name);
      expect(text, name).not.toContain(MASTER_KEY);
      expect(text, name).not.toMatch(/\bsk-[A-Za-z0-9_-]{4,}/);
      expect(text, name).not.toContain("fake-key");
    }
  });

  it("non-streamed chat: billed to the request's user at LiteLLM's reported cost", () => {
    const p = load("nonstream");
    const r = mapped(p);
    expect(String(p.id)).toMatch(/^chatcmpl-/);
    expect(r.requestId).toBe(p.id);
    expect(r.requestId).not.toBe(p.litellm_call_id);
    expect(r).toMatchObject({
      customerId: "customer-123",
      model: "gpt-4o",
      provider: "openai",
      callType: "acompletion",
      status: "success",
      tokensInput: 120,
      tokensOutput: 30,
      tokensCached: 0,
      tokensCacheWrite: 0,
      tokensReasoning: 0,
      totalTokens: 150,
      // 120 × 0.000005 + 30 × 0.000015; LiteLLM sends the float 0.0010500000000000002
      costUsd: "0.00105",
      costSource: "reported",
      billable: true,
      notBillableReason: null,
    });
    expect(r.metadata.provider_model).toBe("openai/gpt-4o");
    expectCommon(p, r);
  });

  it("streamed chat: the final chunk's usage, with a non-zero reported cost", () => {
    const p = load("stream");
    expect(p.stream).toBe(true);
    const r = mapped(p);
    expect(String(p.id)).toMatch(/^chatcmpl-/);
    expect(r.requestId).toBe(p.id);
    expect(r).toMatchObject({
      customerId: "customer-stream",
      model: "gpt-4o",
      provider: "openai",
      status: "success",
      tokensInput: 50,
      tokensOutput: 20,
      tokensCached: 0,
      totalTokens: 70,
      costUsd: "0.00055",
      costSource: "reported",
      billable: true,
    });
    expectCommon(p, r);
  });

  it("streamed chat reported at $0 is priced from config.yaml to the same amount", () => {
    const r = mapped({ ...load("stream"), response_cost: 0 });
    expect(r).toMatchObject({ costUsd: "0.00055", costSource: "priced", billable: true });
  });

  it("cached prompt tokens: read from metadata.usage_object, part of the input, at the cache price", () => {
    const p = load("cached");
    // LiteLLM has no top-level cached-token field: only the usage object carries them.
    expect(p.metadata?.usage_object).toMatchObject({ prompt_tokens_details: { cached_tokens: 800 } });
    const r = mapped(p);
    expect(r.requestId).toBe(p.id);
    expect(r).toMatchObject({
      customerId: "customer-cache",
      model: "gpt-4o-mini",
      provider: "openai",
      status: "success",
      tokensInput: 1000,
      tokensCached: 800,
      tokensCacheWrite: 0,
      tokensOutput: 100,
      totalTokens: 1100,
      // 200 × 0.00000015 + 800 × 0.000000075 + 100 × 0.0000006
      costUsd: "0.00015",
      costSource: "reported",
      billable: true,
    });
    expectCommon(p, r);
  });

  it("failed call: recorded as a failure without tokens, not billable", () => {
    const p = load("failure");
    expect(p.error_str).toContain("upstream failure");
    const r = mapped(p);
    // A failed call has no provider response id: LiteLLM's id is its call id.
    expect(r.requestId).toBe(p.litellm_call_id);
    expect(r).toMatchObject({
      customerId: "customer-fail",
      model: "gpt-4o",
      provider: "openai",
      status: "failure",
      tokensInput: 0,
      tokensOutput: 0,
      totalTokens: 0,
      costUsd: "0",
      billable: false,
      notBillableReason: "failed call without tokens",
    });
    expectCommon(p, r);
  });

  it("embedding: billed on its input tokens, no output", () => {
    const p = load("embedding");
    const r = mapped(p);
    expect(r.requestId).toBe(p.litellm_call_id);
    expect(r).toMatchObject({
      customerId: "customer-embed",
      model: "text-embedding-3-small",
      provider: "openai",
      callType: "aembedding",
      status: "success",
      // two inputs × 5 tokens from the fake upstream
      tokensInput: 10,
      tokensOutput: 0,
      totalTokens: 10,
      // 10 × 0.00000002
      costUsd: "0.0000002",
      costSource: "reported",
      billable: true,
    });
    expectCommon(p, r);
  });
});
