/**
 * Prepaid credits end to end: the real LiteLLM proxy with the billing callback and the entitlement
 * hook, the webhook service (ledger, delivery, entitlement engine), PostgreSQL, Redis and the Lago
 * double, driven with the `openai` SDK. A customer with a wallet of a few cents calls until the
 * credit is spent; then its calls are refused with 402 and the message, streaming ones too; a
 * top-up webhook serves it again; a customer without a wallet is never affected.
 */
import { randomUUID } from "node:crypto";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { REDIS_URL } from "../support/env.ts";
import { FakeOpenAI } from "../support/fake-openai.ts";
import { LagoDouble } from "../support/lago-double.ts";
import type { WebhookEndpoint } from "../support/lago-prepaid.ts";
import { type LiteLLMProxy, MASTER_KEY, startProxy } from "../support/litellm-proxy.ts";
import { eventually, SECRET, startService, type TestService } from "../support/service.ts";

let upstream: FakeOpenAI;
let lago: LagoDouble;
let db: TestDatabase;
let svc: TestService;
let proxy: LiteLLMProxy;
let client: OpenAI;
let endpoint: WebhookEndpoint;
const prefix = `e2e-ent:${randomUUID()}:`;

// gpt-4o: 1000 × $0.000005 + 200 × $0.000015 = $0.008 = 0.8 cents a call.
const CALL = "usage:prompt=1000,completion=200";
const CALL_CENTS = 0.8;

beforeAll(async () => {
  upstream = await FakeOpenAI.start();
  lago = await LagoDouble.start({ apiKey: "lago-key" });
  lago.addMetric("llm_tokens");
  for (const c of ["cust-prepaid", "cust-free", "cust-stream"]) lago.addSubscription(c, c);
  db = await createTestDatabase();
  svc = await startService(
    db.url,
    {
      LAGO_API_URL: lago.url,
      LAGO_API_KEY: "lago-key",
      LAGO_WEBHOOK_HMAC_KEY: lago.prepaid.hmacKey,
      REDIS_URL,
      ENFORCEMENT: "enforce",
      ENTITLEMENT_REDIS_PREFIX: prefix,
    },
    { worker: true },
  );
  const url = await svc.app.listen({ host: "127.0.0.1", port: 0 });
  endpoint = { url: `${url}/webhooks/lago`, algorithm: "hmac" };
  await svc.service.entitlements.engine.start();
  proxy = await startProxy({
    upstream: upstream.url,
    callbacks: "ours",
    webhookUrl: url,
    webhookSecret: SECRET,
    entitlements: { redisUrl: REDIS_URL, prefix },
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

const chat = (user: string, text = CALL) =>
  client.chat.completions.create({
    model: "gpt-4o",
    messages: [{ role: "user", content: `${text} ${randomUUID()}` }],
    user,
  });

/** A call that must be refused: the SDK's error. */
async function refused(p: Promise<unknown>): Promise<InstanceType<typeof OpenAI.APIError>> {
  try {
    await p;
  } catch (err) {
    if (err instanceof OpenAI.APIError) return err;
    throw err;
  }
  throw new Error("the call was served");
}

/** Calls until one is refused (at most `max`); the number served first and the refusal. */
async function callUntilRefused(user: string, max: number, stream = false) {
  let served = 0;
  for (let i = 0; i < max; i++) {
    try {
      if (stream) {
        const s = await client.chat.completions.create({
          model: "gpt-4o",
          messages: [{ role: "user", content: `${CALL} ${randomUUID()}` }],
          user,
          stream: true,
          stream_options: { include_usage: true },
        });
        for await (const _ of s) {
          // drain
        }
      } else await chat(user);
      served++;
    } catch (err) {
      if (err instanceof OpenAI.APIError) return { served, error: err };
      throw err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${max} calls served, none refused`);
}

describe("prepaid credits through the real proxy", () => {
  it("refuses a customer once its few cents are spent (402, the message), serves it again after a top-up webhook, and leaves others alone", async () => {
    const wallet = lago.prepaid.createWallet("cust-prepaid", 3);
    await chat("cust-prepaid"); // the first call tells the service about the customer
    await eventually(
      async () =>
        (
          await db.sql`SELECT 1 FROM entitlements WHERE customer_id = 'cust-prepaid' AND wallet_fingerprint IS NOT NULL`
        ).length > 0,
      "the wallet read from Lago",
      20_000,
    );
    const { served, error } = await callUntilRefused("cust-prepaid", 20);
    // 3 cents at 0.8 a call: spent during the 4th call; one more may already be under way.
    const total = served + 1;
    expect(total * CALL_CENTS).toBeGreaterThanOrEqual(3);
    expect(total).toBeLessThanOrEqual(5);
    expect(error.status).toBe(402);
    expect(error.message).toMatch(
      /Your prepaid credit is used up \(remaining: -?0\.\d\d USD\)\. Top up your wallet/,
    );
    expect(error.headers?.get("x-lago-entitlement-reason")).toBe("wallet_exhausted");
    expect((error.error as { type?: string }).type).toBe("payment_required");
    // Nobody else is affected.
    const other = await chat("cust-free");
    expect(other.choices[0]?.message.content).toBeTruthy();
    // The refusal reached Lago as nothing: only served calls are billed.
    await eventually(
      async () =>
        lago.events.filter((e) => e.external_subscription_id === "cust-prepaid").length === total * 2,
      "the served calls billed",
    );
    await new Promise((r) => setTimeout(r, 1500));
    expect(lago.events.filter((e) => e.external_subscription_id === "cust-prepaid")).toHaveLength(total * 2);
    // Still refused a moment later (the ledger, not only the proxy's own count, says so).
    expect((await refused(chat("cust-prepaid"))).status).toBe(402);

    const topUp = lago.prepaid.topUp(wallet.lago_id, 100);
    const [hook] = await lago.prepaid.sendTransactionWebhook("wallet_transaction.created", topUp, {
      to: [endpoint],
    });
    expect(hook?.status).toBe(200);
    await eventually(
      async () => {
        try {
          await chat("cust-prepaid");
          return true;
        } catch {
          return false;
        }
      },
      "served again after the top-up",
      15_000,
    );
    const rejections = await svc.app.inject({ method: "GET", url: "/health/metrics" });
    expect(rejections.body).toMatch(
      /lago_billing_entitlement_proxy_rejections\{mode="enforce",reason="wallet_exhausted"\} [1-9]/,
    );
  });

  it("refuses a streaming call the same way, before any chunk", async () => {
    lago.prepaid.createWallet("cust-stream", 2);
    await chat("cust-stream");
    await eventually(
      async () =>
        (
          await db.sql`SELECT 1 FROM entitlements WHERE customer_id = 'cust-stream' AND wallet_fingerprint IS NOT NULL`
        ).length > 0,
      "the wallet read from Lago",
      20_000,
    );
    const { error } = await callUntilRefused("cust-stream", 20, true);
    expect(error.status).toBe(402);
    expect(error.message).toMatch(/prepaid credit is used up/);
  });

  it("refuses a customer an operator blocked, with the operator's reason", async () => {
    const { setOverride } = await import("../../src/entitlements/store.ts");
    await setOverride(svc.service.sql, "cust-free", "blocked", "abuse report #42", "ops");
    const error = await eventually(async () => {
      try {
        await chat("cust-free");
        return undefined;
      } catch (err) {
        return err instanceof OpenAI.APIError ? err : undefined;
      }
    }, "the manual block in force");
    expect(error.status).toBe(402);
    expect(error.message).toMatch(/suspended: abuse report #42\. Contact support/);
    await setOverride(svc.service.sql, "cust-free", null, "cleared", "ops");
  });
});
