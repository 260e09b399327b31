/**
 * POST /webhooks/lago against webhooks the Lago double signs as Lago does (app/models/webhook.rb):
 * both algorithms, a bad or missing signature (401, nothing stored), a replay (same
 * X-Lago-Unique-Key: stored once), an unknown type (stored, 200, ignored) and out-of-order delivery
 * (an older state never overrides a newer one).
 */
import { generateKeyPairSync, sign } from "node:crypto";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { LagoDouble } from "../support/lago-double.ts";
import type { WebhookEndpoint } from "../support/lago-prepaid.ts";
import { startService, type TestService } from "../support/service.ts";

let lago: LagoDouble;
let db: TestDatabase;
let t: TestService;
let hmac: WebhookEndpoint;
let jwt: WebhookEndpoint;

beforeAll(async () => {
  lago = await LagoDouble.start({ apiKey: "lago-key" });
});
afterAll(async () => {
  await lago.close();
});
beforeEach(async () => {
  lago.reset({ entities: true });
  lago.addSubscription("cust-w", "cust-w");
  db = await createTestDatabase();
  t = await startService(db.url, {
    LAGO_API_URL: lago.url,
    LAGO_API_KEY: "lago-key",
    LAGO_WEBHOOK_HMAC_KEY: lago.prepaid.hmacKey,
  });
  const url = `${await t.app.listen({ host: "127.0.0.1", port: 0 })}/webhooks/lago`;
  hmac = { url, algorithm: "hmac" };
  jwt = { url, algorithm: "jwt" };
});
afterEach(async () => {
  await t.close();
  await db.drop();
});

const stored = async () =>
  db.sql<
    { unique_key: string; webhook_type: string; outcome: string; deliveries: number; algorithm: string }[]
  >`
    SELECT unique_key, webhook_type, outcome, deliveries, algorithm FROM lago_webhooks ORDER BY id`;

const walletRow = async (id: string) =>
  (
    await db.sql<{ balance_cents: string; status: string; source: string }[]>`
    SELECT balance_cents, status, source FROM entitlement_wallets WHERE lago_id = ${id}`
  )[0];

describe("POST /webhooks/lago signatures", () => {
  it("accepts a webhook signed with the organization's HMAC key and stores it", async () => {
    const w = lago.prepaid.createWallet("cust-w", 500);
    const [r] = await lago.prepaid.sendWalletWebhook("wallet.created", w.lago_id, { to: [hmac] });
    expect(r?.status).toBe(200);
    expect(r?.response).toMatchObject({ received: true, duplicate: false, outcome: "applied" });
    expect(await stored()).toMatchObject([
      { webhook_type: "wallet.created", algorithm: "hmac", outcome: "applied" },
    ]);
    expect(await walletRow(w.lago_id)).toMatchObject({
      balance_cents: "500",
      status: "active",
      source: "webhook",
    });
  });

  it("accepts an RS256 JWT, with the public key read from GET /api/v1/webhooks/json_public_key (base64)", async () => {
    const w = lago.prepaid.createWallet("cust-w", 700);
    const [r] = await lago.prepaid.sendWalletWebhook("wallet.created", w.lago_id, { to: [jwt] });
    expect(r?.status, JSON.stringify(r?.response)).toBe(200);
    expect(lago.requests.some((q) => q.path === "/api/v1/webhooks/json_public_key" && q.status === 200)).toBe(
      true,
    );
    expect(await walletRow(w.lago_id)).toMatchObject({ balance_cents: "700" });
  });

  it("refuses (401) and stores nothing: a tampered body, no signature, another key, alg none, an unknown algorithm", async () => {
    const w = lago.prepaid.createWallet("cust-w", 500);
    const tamper = (body: string) => body.replace('"balance_cents":500', '"balance_cents":50000');
    const other = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey;
    const b64 = (x: string | Buffer) => Buffer.from(x).toString("base64url");
    const body = lago.prepaid.payload("wallet.created", "wallet", lago.prepaid.walletJson(w));
    const forged = `${b64(JSON.stringify({ alg: "RS256" }))}.${b64(JSON.stringify({ data: body }))}`;
    const forgedJwt = `${forged}.${b64(sign("RSA-SHA256", Buffer.from(forged), other))}`;
    const none = `${b64(JSON.stringify({ alg: "none" }))}.${b64(JSON.stringify({ data: body }))}.`;
    const attempts = [
      lago.prepaid.sendWalletWebhook("wallet.created", w.lago_id, { to: [hmac], tamper }),
      lago.prepaid.sendWalletWebhook("wallet.created", w.lago_id, { to: [jwt], tamper }),
      lago.prepaid.sendWalletWebhook("wallet.created", w.lago_id, { to: [hmac], signatureOverride: null }),
      lago.prepaid.sendWalletWebhook("wallet.created", w.lago_id, {
        to: [jwt],
        signatureOverride: forgedJwt,
      }),
      lago.prepaid.sendWalletWebhook("wallet.created", w.lago_id, { to: [jwt], signatureOverride: none }),
      lago.prepaid.sendWalletWebhook("wallet.created", w.lago_id, {
        to: [{ url: hmac.url, algorithm: "md5" as never }],
      }),
    ];
    for (const p of attempts) {
      const [r] = await p;
      expect(r?.status).toBe(401);
      expect((r?.response as { message?: string } | undefined)?.message).toMatch(/nothing was stored/);
    }
    expect(await stored()).toEqual([]);
    expect(await walletRow(w.lago_id)).toBeUndefined();
    const [{ n } = { n: -1 }] = await db.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM entitlements`;
    expect(n).toBe(0);
  });

  it("refuses HMAC webhooks when LAGO_WEBHOOK_HMAC_KEY is not set, saying so", async () => {
    await t.close();
    t = await startService(db.url, { LAGO_API_URL: lago.url, LAGO_API_KEY: "lago-key" });
    const url = `${await t.app.listen({ host: "127.0.0.1", port: 0 })}/webhooks/lago`;
    const w = lago.prepaid.createWallet("cust-w", 500);
    const [r] = await lago.prepaid.sendWalletWebhook("wallet.created", w.lago_id, {
      to: [{ url, algorithm: "hmac" }],
    });
    expect(r?.status).toBe(401);
    expect((r?.response as { message?: string } | undefined)?.message).toMatch(
      /LAGO_WEBHOOK_HMAC_KEY is not set/,
    );
  });

  it("does not need the bearer secret of the other /webhooks routes", async () => {
    const res = await t.app.inject({ method: "POST", url: "/webhooks/lago", payload: { webhook_type: "x" } });
    expect(res.statusCode).toBe(401);
    expect(res.json().message).toMatch(/X-Lago-Signature/);
  });
});

describe("POST /webhooks/lago delivery semantics", () => {
  it("stores a replayed webhook (same X-Lago-Unique-Key) once and does not apply it again", async () => {
    const w = lago.prepaid.createWallet("cust-w", 500);
    const [first] = await lago.prepaid.sendWalletWebhook("wallet.updated", w.lago_id, { to: [hmac] });
    // Meanwhile a newer state arrives; then Lago retries the first webhook.
    lago.prepaid.topUp(w.lago_id, 1000);
    await lago.prepaid.sendWalletWebhook("wallet.updated", w.lago_id, { to: [hmac] });
    const [again] = await lago.prepaid.resend(first as never, [hmac]);
    expect(again?.status).toBe(200);
    expect(again?.response).toMatchObject({ duplicate: true });
    const rows = await stored();
    expect(rows).toHaveLength(2);
    expect(rows[0]).toMatchObject({ unique_key: first?.uniqueKey, deliveries: 2 });
    expect(await walletRow(w.lago_id)).toMatchObject({ balance_cents: "1500" });
  });

  it("stores an unknown type and answers 200; a known type with no bearing on access is stored as ignored", async () => {
    const [u] = await lago.prepaid.send("spaceship.launched", "spaceship", { lago_id: "x" }, { to: [jwt] });
    expect(u?.status).toBe(200);
    expect(u?.response).toMatchObject({ outcome: "unknown" });
    const [i] = await lago.prepaid.send("invoice.created", "invoice", { lago_id: "inv" }, { to: [hmac] });
    expect(i?.response).toMatchObject({ outcome: "ignored" });
    expect((await stored()).map((r) => [r.webhook_type, r.outcome])).toEqual([
      ["spaceship.launched", "unknown"],
      ["invoice.created", "ignored"],
    ]);
    const metrics = await t.app.inject({ method: "GET", url: "/health/metrics" });
    expect(metrics.body).toMatch(
      /lago_billing_lago_webhooks_received_total\{type="unknown",outcome="unknown"\} 1/,
    );
    expect(metrics.body).toMatch(
      /lago_billing_lago_webhooks_received_total\{type="invoice.created",outcome="ignored"\} 1/,
    );
  });

  it("keeps the newer wallet when an older wallet webhook arrives after it", async () => {
    const w = lago.prepaid.createWallet("cust-w", 500);
    const older = lago.prepaid.walletJson(w);
    await new Promise((r) => setTimeout(r, 5));
    lago.prepaid.topUp(w.lago_id, 1000);
    const [newer] = await lago.prepaid.sendWalletWebhook("wallet.updated", w.lago_id, { to: [hmac] });
    expect(newer?.response).toMatchObject({ outcome: "applied" });
    const [late] = await lago.prepaid.send("wallet.updated", "wallet", older, { to: [hmac] });
    expect(late?.response).toMatchObject({ outcome: "stale" });
    expect(await walletRow(w.lago_id)).toMatchObject({ balance_cents: "1500" });
    // A terminated wallet stays terminated, whatever arrives after.
    lago.prepaid.terminateWallet(w.lago_id);
    await lago.prepaid.sendWalletWebhook("wallet.terminated", w.lago_id, { to: [hmac] });
    const active = { ...lago.prepaid.walletJson(w), status: "active", terminated_at: null };
    const [revive] = await lago.prepaid.send("wallet.updated", "wallet", active, { to: [hmac] });
    expect(revive?.response).toMatchObject({ outcome: "stale" });
    expect(await walletRow(w.lago_id)).toMatchObject({ status: "terminated" });
  });

  it("keeps a subscription terminated when its subscription.started arrives late", async () => {
    const sub = lago.subscriptions.get("cust-w");
    if (!sub) throw new Error("no subscription");
    const started = lago.prepaid.subscriptionJson(sub);
    lago.terminateSubscription("cust-w");
    const [term] = await lago.prepaid.sendSubscriptionWebhook("subscription.terminated", sub, { to: [jwt] });
    expect(term?.response).toMatchObject({ outcome: "applied" });
    const [late] = await lago.prepaid.send("subscription.started", "subscription", started, { to: [jwt] });
    expect(late?.response).toMatchObject({ outcome: "stale" });
    const [row] = await db.sql`SELECT status FROM entitlement_subscriptions WHERE lago_id = ${sub.lago_id}`;
    expect(row?.status).toBe("terminated");
  });

  it("maps a wallet transaction to its wallet's customer and asks for a refresh", async () => {
    const w = lago.prepaid.createWallet("cust-w", 500);
    const tx = lago.prepaid.topUp(w.lago_id, 300);
    // The wallet is unknown to the service: its customer is asked from GET /api/v1/wallets/:id.
    const [r] = await lago.prepaid.sendTransactionWebhook("wallet_transaction.created", tx, { to: [hmac] });
    expect(r?.response).toMatchObject({ outcome: "refresh" });
    const [row] = await db.sql<{ next_refresh_at: Date }[]>`
      SELECT next_refresh_at FROM entitlements WHERE customer_id = 'cust-w'`;
    expect(row?.next_refresh_at.getTime()).toBeLessThanOrEqual(Date.now() + 1000);
    const [hook] =
      await db.sql`SELECT customer_id FROM lago_webhooks WHERE webhook_type = 'wallet_transaction.created'`;
    expect(hook?.customer_id).toBe("cust-w");
  });
});
