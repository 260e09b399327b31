/**
 * The Lago double's prepaid side (test/support/lago-prepaid.ts) against the Lago source it follows:
 * wallets listed and created as app/controllers/api/v1/wallets_controller.rb serves them, the
 * ongoing balance moving only on Lago's clock, current usage and alerts, the public key as
 * json_public_key serves it, and webhooks signed as app/models/webhook.rb signs them.
 */
import { createHmac, createPublicKey, verify } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { LagoDouble } from "../support/lago-double.ts";

let lago: LagoDouble;
const auth = { authorization: "Bearer k", "content-type": "application/json" };
const get = async (path: string) => {
  const res = await fetch(`${lago.url}${path}`, { headers: auth });
  return { status: res.status, headers: res.headers, body: (await res.json()) as Record<string, unknown> };
};

beforeAll(async () => {
  lago = await LagoDouble.start({ apiKey: "k" });
});
afterAll(async () => {
  await lago.close();
});
beforeEach(() => {
  lago.reset({ entities: true });
  lago.prepaid.readRateLimitPerSecond = null;
});

describe("LagoDouble prepaid", () => {
  it("creates wallets over HTTP and lists a customer's (active and terminated) with Lago's fields", async () => {
    lago.addSubscription("c1", "c1");
    const created = await fetch(`${lago.url}/api/v1/wallets`, {
      method: "POST",
      headers: auth,
      body: JSON.stringify({
        wallet: { external_customer_id: "c1", rate_amount: "1.0", currency: "USD", paid_credits: "0.25" },
      }),
    });
    expect(created.status).toBe(200);
    const w = ((await created.json()) as { wallet: { lago_id: string } }).wallet;
    const list = await get("/api/v1/wallets?external_customer_id=c1");
    expect(list.body.wallets).toEqual([
      expect.objectContaining({
        lago_id: w.lago_id,
        external_customer_id: "c1",
        status: "active",
        balance_cents: 25,
        ongoing_balance_cents: 25,
        ongoing_usage_balance_cents: 0,
        credits_ongoing_balance: "0.25",
        last_balance_sync_at: expect.any(String),
      }),
    ]);
    lago.prepaid.terminateWallet(w.lago_id);
    expect((await get(`/api/v1/wallets/${w.lago_id}`)).body.wallet).toMatchObject({ status: "terminated" });
    expect((await get("/api/v1/wallets?external_customer_id=nobody")).status).toBe(404);
  });

  it("moves the ongoing balance only when Lago's clock runs, from the billed events", async () => {
    lago.addMetric("llm_cost", { fieldName: "units" });
    lago.addSubscription("c1", "c1");
    const w = lago.prepaid.createWallet("c1", 10);
    const send = (tx: string, cents: string) =>
      fetch(`${lago.url}/api/v1/events`, {
        method: "POST",
        headers: auth,
        body: JSON.stringify({
          event: {
            transaction_id: tx,
            code: "llm_cost",
            external_subscription_id: "c1",
            timestamp: Date.now() / 1000,
            precise_total_amount_cents: cents,
            properties: { units: 1 },
          },
        }),
      });
    await send("t1", "6");
    expect(lago.prepaid.walletJson(w).ongoing_balance_cents).toBe(10);
    expect(lago.prepaid.refreshOngoingBalances()).toEqual([]);
    expect(lago.prepaid.walletJson(w).ongoing_balance_cents).toBe(4);
    await send("t2", "6");
    expect(lago.prepaid.refreshOngoingBalances().map((x) => x.lago_id)).toEqual([w.lago_id]); // depleted now
    const usage = await get("/api/v1/customers/c1/current_usage?external_subscription_id=c1");
    expect(usage.body.customer_usage).toMatchObject({ amount_cents: 12, currency: "USD" });
  });

  it("serves alerts and 429s the reads above their rate limit with Lago Cloud's headers", async () => {
    lago.addSubscription("c1", "c1");
    lago.prepaid.addAlert("c1", { thresholds: [{ code: "hard_limit", value: "500" }] });
    expect((await get("/api/v1/subscriptions/c1/alerts")).body.alerts).toEqual([
      expect.objectContaining({
        alert_type: "current_usage_amount",
        thresholds: [{ code: "hard_limit", value: "500", recurring: false }],
      }),
    ]);
    lago.prepaid.readRateLimitPerSecond = 1;
    await get("/api/v1/wallets?external_customer_id=c1");
    const limited = await get("/api/v1/wallets?external_customer_id=c1");
    expect(limited.status).toBe(429);
    expect(limited.headers.get("x-ratelimit-reset")).toMatch(/^\d+$/);
  });

  it("serves its public key as json_public_key does and signs webhooks with it (jwt) or the HMAC key", async () => {
    const received: { headers: Record<string, unknown>; body: string }[] = [];
    const server = createServer((req, res) => {
      let body = "";
      req.on("data", (d: Buffer) => {
        body += d.toString();
      });
      req.on("end", () => {
        received.push({ headers: req.headers, body });
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    try {
      const key = (await get("/api/v1/webhooks/json_public_key")).body as { webhook: { public_key: string } };
      expect(key.webhook.public_key).toMatch(/\n$/); // Base64.encode64 of the PEM
      const pem = Buffer.from(key.webhook.public_key, "base64").toString();
      lago.addSubscription("c1", "c1");
      const w = lago.prepaid.createWallet("c1", 10);
      await lago.prepaid.sendWalletWebhook("wallet.updated", w.lago_id, {
        to: [
          { url, algorithm: "jwt" },
          { url, algorithm: "hmac" },
        ],
      });
      const [j, h] = received as [(typeof received)[0], (typeof received)[0]];
      expect(j.headers["x-lago-signature-algorithm"]).toBe("jwt");
      expect(j.headers["x-lago-unique-key"]).toBe(h.headers["x-lago-unique-key"]);
      const [hd, pl, sig] = String(j.headers["x-lago-signature"]).split(".") as [string, string, string];
      expect(
        verify("RSA-SHA256", Buffer.from(`${hd}.${pl}`), createPublicKey(pem), Buffer.from(sig, "base64url")),
      ).toBe(true);
      expect(JSON.parse(Buffer.from(pl, "base64url").toString())).toEqual({ data: j.body, iss: lago.url });
      expect(JSON.parse(j.body)).toMatchObject({
        webhook_type: "wallet.updated",
        object_type: "wallet",
        wallet: { lago_id: w.lago_id },
      });
      expect(h.headers["x-lago-signature"]).toBe(
        createHmac("sha256", lago.prepaid.hmacKey).update(h.body).digest("base64"),
      );
    } finally {
      server.close();
    }
  });
});
