import { existsSync } from "node:fs";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfiguredModels, PriceBook, priceCall } from "../../src/pricing.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { FakeOpenAI } from "../support/fake-openai.ts";
import { LagoDouble } from "../support/lago-double.ts";
import { type LiteLLMProxy, MASTER_KEY, startProxy } from "../support/litellm-proxy.ts";
import { freePort } from "../support/process.ts";
import { eventually, SECRET, startService, type TestService } from "../support/service.ts";

let upstream: FakeOpenAI;
let lago: LagoDouble;
let db: TestDatabase;
let svc: TestService;
let proxy: LiteLLMProxy;
let client: OpenAI;
let webhookPort: number;
const prices = new PriceBook(loadConfiguredModels("config.yaml"));

async function startWebhookService(): Promise<TestService> {
  const t = await startService(
    db.url,
    { LAGO_WEBHOOK_URL: lago.url, LAGO_API_KEY: "lago-key", LITELLM_CONFIG_PATH: "config.yaml" },
    { worker: true },
  );
  await t.app.listen({ host: "127.0.0.1", port: webhookPort });
  return t;
}

beforeAll(async () => {
  upstream = await FakeOpenAI.start();
  lago = await LagoDouble.start({ apiKey: "lago-key" });
  lago.addMetric("llm_tokens");
  for (const c of ["customer-123", "customer-stream", "customer-cache", "customer-embed", "customer-down"]) {
    lago.addSubscription(c, c);
  }
  db = await createTestDatabase();
  webhookPort = await freePort();
  svc = await startWebhookService();
  proxy = await startProxy({
    upstream: upstream.url,
    callbacks: "ours",
    webhookUrl: `http://127.0.0.1:${webhookPort}`,
    webhookSecret: SECRET,
    // A tiny in-memory queue, so an outage of the webhook service spills into the spool file.
    env: { LAGO_BILLING_QUEUE_MAX: "3" },
  });
  client = new OpenAI({ apiKey: MASTER_KEY, baseURL: `${proxy.url}/v1`, maxRetries: 0 });
}, 180_000);

afterAll(async () => {
  await proxy?.stop();
  await svc?.close();
  await db?.drop();
  await lago?.close();
  await upstream?.close();
});

const ledgerRow = (customer: string) =>
  eventually(
    async () => (await db.sql`SELECT * FROM usage_events WHERE customer_id = ${customer}`)[0],
    `a ledger row for ${customer}`,
    30_000,
  );

describe("the real LiteLLM proxy with our callback and the OpenAI SDK", () => {
  it("bills a chat call to the request's user, at config.yaml's prices, exactly once in Lago", async () => {
    const res = await client.chat.completions.create({
      model: "gpt-4o",
      messages: [{ role: "user", content: "Hello usage:prompt=120,completion=30" }],
      user: "customer-123",
    });
    expect(res.usage).toMatchObject({ prompt_tokens: 120, completion_tokens: 30 });
    const row = await ledgerRow("customer-123");
    expect(row).toMatchObject({
      model: "gpt-4o",
      tokens_input: "120",
      tokens_output: "30",
      source: "litellm",
      status: "success",
    });
    // 120 × 0.000005 + 30 × 0.000015
    expect(row.cost_usd).toBe("0.001050000000");
    expect(row.request_id).toBe(res.id);
    await eventually(
      () => lago.events.filter((e) => e.external_subscription_id === "customer-123").length === 2,
      "2 Lago events",
    );
    const sent = lago.events.filter((e) => e.external_subscription_id === "customer-123");
    expect(sent.map((e) => [e.properties.type, e.properties.tokens]).sort()).toEqual([
      ["input", 120],
      ["output", 30],
    ]);
    expect(Math.abs((sent[0]?.timestamp ?? 0) - new Date(row.event_time).getTime() / 1000)).toBeLessThan(
      0.001,
    );
    expect(JSON.stringify(row)).not.toContain("Hello");
  });

  it("bills a streamed call once, after the stream ends, with the stream's usage", async () => {
    const stream = await client.chat.completions.create({
      model: "gpt-4o",
      messages: [{ role: "user", content: "stream usage:prompt=50,completion=20" }],
      user: "customer-stream",
      stream: true,
      stream_options: { include_usage: true },
    });
    let chunks = 0;
    for await (const _ of stream) chunks++;
    expect(chunks).toBeGreaterThan(1);
    const row = await ledgerRow("customer-stream");
    expect(row).toMatchObject({ tokens_input: "50", tokens_output: "20" });
    expect(Number(row.cost_usd)).toBeCloseTo(50 * 0.000005 + 20 * 0.000015, 12);
    await new Promise((r) => setTimeout(r, 1000));
    const [n] =
      await db.sql`SELECT count(*)::int AS n FROM usage_events WHERE customer_id = 'customer-stream'`;
    expect(n?.n).toBe(1);
  });

  it("prices cached prompt tokens at the cache price, to the cent-fraction", async () => {
    await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "cached usage:prompt=1000,completion=100,cached=800" }],
      user: "customer-cache",
    });
    const row = await ledgerRow("customer-cache");
    expect(row).toMatchObject({ tokens_input: "1000", tokens_cached: "800", tokens_output: "100" });
    const expected = priceCall(prices.get("gpt-4o-mini") ?? expect.fail("gpt-4o-mini has no price"), {
      input: 1000,
      output: 100,
      cached: 800,
      cacheWrite: 0,
    });
    expect(expected).toBe("0.00015");
    expect(row.cost_usd).toBe("0.000150000000");
    await eventually(
      () => lago.events.filter((e) => e.external_subscription_id === "customer-cache").length === 3,
      "3 Lago events",
    );
    const types = lago.events
      .filter((e) => e.external_subscription_id === "customer-cache")
      .map((e) => [e.properties.type, e.properties.tokens]);
    expect(types.sort()).toEqual([
      ["cached_input", 800],
      ["input", 200],
      ["output", 100],
    ]);
  });

  it("bills embeddings on their input tokens", async () => {
    const res = await client.embeddings.create({
      model: "text-embedding-3-small",
      input: ["a", "b"],
      user: "customer-embed",
    });
    expect(res.data).toHaveLength(2);
    const row = await ledgerRow("customer-embed");
    expect(row.tokens_input).toBe(String(res.usage.prompt_tokens));
    expect(Number(row.cost_usd)).toBeCloseTo(res.usage.prompt_tokens * 0.00000002, 14);
  });

  it("records failed calls but does not bill them", async () => {
    await expect(
      client.chat.completions.create({
        model: "gpt-4o",
        messages: [{ role: "user", content: "fail:500" }],
        user: "customer-fail",
      }),
    ).rejects.toThrow();
    const row = await ledgerRow("customer-fail");
    expect(row).toMatchObject({ status: "failure", billable: false });
    const [n] = await db.sql`SELECT count(*)::int AS n FROM lago_events WHERE customer_id = 'customer-fail'`;
    expect(n?.n).toBe(0);
  });

  it("does not bill an answer from the Redis response cache", async () => {
    const ask = () =>
      client.chat.completions.create({
        model: "gpt-4o",
        messages: [{ role: "user", content: "same question usage:prompt=40,completion=10" }],
        user: "customer-cached-answer",
      });
    await ask();
    await ledgerRow("customer-cached-answer");
    const calls = upstream.requests.count;
    await ask();
    expect(upstream.requests.count).toBe(calls);
    const rows = await eventually(async () => {
      const r =
        await db.sql`SELECT billable, not_billable_reason FROM usage_events WHERE customer_id = 'customer-cached-answer' ORDER BY id`;
      return r.length === 2 ? r : undefined;
    }, "two rows");
    expect(rows.map((r) => r.billable)).toEqual([true, false]);
    expect(rows[1]?.not_billable_reason).toMatch(/cache hit/);
  });

  it("never blocks calls while the webhook service is down, spools them to disk, and delivers them after", async () => {
    await svc.close();
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      const r = await client.chat.completions.create({
        model: "gpt-4o",
        messages: [{ role: "user", content: `down ${i}` }],
        user: "customer-down",
      });
      ids.push(r.id);
    }
    await eventually(
      () => existsSync(`${proxy.dir}/spool.ndjson`),
      "the callback spilled to its spool file",
      20_000,
    );
    svc = await startWebhookService();
    await eventually(
      async () =>
        (await db.sql`SELECT count(*)::int AS n FROM usage_events WHERE request_id = ANY(${ids})`)[0]?.n ===
        12,
      "all 12 calls made during the outage reach the ledger",
      60_000,
    );
    await eventually(
      () => lago.events.filter((e) => e.external_subscription_id === "customer-down").length === 24,
      "24 Lago events",
      30_000,
    );
    const counts = lago.countByTransaction();
    expect([...counts.values()].every((c) => c === 1)).toBe(true);
  });
});

describe("the proxy's lifecycle", () => {
  it("starts with the repository's own config.yaml and placeholder provider keys", async () => {
    const real = await startProxy({
      upstream: upstream.url,
      callbacks: "ours",
      realConfig: true,
      env: {
        LITELLM_MASTER_KEY: MASTER_KEY,
        OPENAI_API_KEY: "sk-placeholder",
        ANTHROPIC_API_KEY: "placeholder",
        COHERE_API_KEY: "placeholder",
        AZURE_API_BASE: "https://placeholder.openai.azure.com",
        AZURE_API_KEY: "placeholder",
        AZURE_API_VERSION: "2024-10-21",
        REDIS_HOST: "127.0.0.1",
        REDIS_PORT: "6379",
        REDIS_PASSWORD: "",
      },
    });
    try {
      const res = await fetch(`${real.url}/v1/models`, {
        headers: { authorization: `Bearer ${MASTER_KEY}` },
      });
      const models = ((await res.json()) as { data: { id: string }[] }).data.map((m) => m.id).sort();
      expect(models).toEqual([
        "azure-gpt-4o",
        "claude-3-5-sonnet",
        "command-r",
        "gpt-4o",
        "gpt-4o-mini",
        "text-embedding-3-small",
      ]);
    } finally {
      await real.stop();
    }
  });

  it("loses no finished call when the proxy is stopped with SIGTERM under load", async () => {
    const second = await startProxy({
      upstream: upstream.url,
      callbacks: "ours",
      webhookUrl: `http://127.0.0.1:${webhookPort}`,
      webhookSecret: SECRET,
      env: { LAGO_BILLING_FLUSH_INTERVAL: "2" },
    });
    const c = new OpenAI({ apiKey: MASTER_KEY, baseURL: `${second.url}/v1`, maxRetries: 0 });
    const finished: string[] = [];
    let stop = false;
    const load = async (k: number) => {
      for (let i = 0; !stop; i++) {
        try {
          const r = await c.chat.completions.create({
            model: "gpt-4o",
            messages: [{ role: "user", content: `sigterm ${k} ${i}` }],
            user: "customer-sigterm",
          });
          finished.push(r.id);
        } catch {
          return; // the proxy is going away: this call did not finish
        }
      }
    };
    const exited = new Promise<number | null>((r) => second.child.once("exit", (code) => r(code)));
    const clients = Array.from({ length: 8 }, (_, k) => load(k));
    await new Promise((r) => setTimeout(r, 1500));
    second.child.kill("SIGTERM");
    stop = true;
    await Promise.all(clients);
    await exited;
    const log = second.output();
    await second.stop();
    expect(finished.length).toBeGreaterThan(5);
    expect(log).not.toMatch(/not drained|flush failed|close failed/);
    await eventually(
      async () =>
        (await db.sql`SELECT count(*)::int AS n FROM usage_events WHERE request_id = ANY(${finished})`)[0]
          ?.n === finished.length,
      `all ${finished.length} finished calls in the ledger`,
      30_000,
    );
  });
});
