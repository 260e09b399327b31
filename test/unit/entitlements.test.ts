import { createHmac, generateKeyPairSync, sign } from "node:crypto";
import { describe, expect, it } from "vitest";
import { billedCents, type DecisionInputs, decide } from "../../src/entitlements/decide.ts";
import {
  compareWallets,
  parseLagoWebhook,
  type WalletReading,
} from "../../src/entitlements/lago-webhooks.ts";
import { parsePublicKey, verifyHmac, verifyJwt } from "../../src/entitlements/signature.ts";
import {
  LAGO_RECOMPUTE_WINDOW_MS,
  limitFromAlerts,
  nextCountedUntil,
  subscriptionStatusOf,
} from "../../src/entitlements/store.ts";
import { toLagoEvents } from "../../src/lago/mapping.ts";
import { loadSettings } from "../../src/settings.ts";

const base: DecisionInputs = {
  override: null,
  subscription: { status: "active", endedAt: null },
  wallet: null,
  limit: null,
  minBalanceCents: 0,
};

describe("decide", () => {
  it("allows a customer with an active subscription and nothing to watch", () => {
    expect(decide(base)).toMatchObject({
      state: "allowed",
      reason: null,
      headroom: null,
      availableCents: null,
    });
  });

  it("does not block on what Lago has not told yet (no subscription read)", () => {
    expect(decide({ ...base, subscription: { status: null, endedAt: null } }).state).toBe("allowed");
  });

  it("blocks a prepaid customer once what remains after our ledger is at or below the minimum", () => {
    const w = (ongoing: number, unaccounted: string, min = 0) =>
      decide({
        ...base,
        minBalanceCents: min,
        wallet: { currency: "USD", ongoingBalanceCents: ongoing, unaccountedCents: unaccounted },
      });
    expect(w(10, "9.999")).toMatchObject({
      state: "allowed",
      availableCents: "0.001",
      headroom: { cents: "0.001" },
    });
    expect(w(10, "10")).toMatchObject({ state: "blocked", reason: "wallet_exhausted", availableCents: "0" });
    expect(w(10, "10.4").message).toBe(
      "Your prepaid credit is used up (remaining: 0.00 USD). Top up your wallet to continue; access resumes within seconds of the top-up.",
    );
    expect(w(10, "112.5").message).toMatch(/remaining: -1\.02 USD/);
    expect(w(100, "40", 60)).toMatchObject({ state: "blocked" });
    expect(w(100, "40", -50)).toMatchObject({ state: "allowed", headroom: { cents: "110" } });
  });

  it("blocks without an active subscription, whatever the credit", () => {
    const d = decide({
      ...base,
      subscription: { status: "terminated", endedAt: new Date("2026-11-30T10:00:00Z") },
      wallet: { currency: "USD", ongoingBalanceCents: 1000, unaccountedCents: "0" },
    });
    expect(d).toMatchObject({ state: "blocked", reason: "subscription_terminated", headroom: null });
    expect(d.message).toBe("Your subscription ended on 2026-11-30. Renew your subscription to continue.");
    expect(decide({ ...base, subscription: { status: "missing", endedAt: null } }).reason).toBe(
      "subscription_missing",
    );
    expect(decide({ ...base, subscription: { status: "pending", endedAt: null } }).message).toMatch(
      /not started yet/,
    );
  });

  it("blocks at the spending limit, and the tighter of wallet and limit is the headroom", () => {
    const limit = (usage: string, unaccounted: string) =>
      decide({
        ...base,
        wallet: { currency: "USD", ongoingBalanceCents: 500, unaccountedCents: "0" },
        limit: {
          limitCents: "300",
          usageCents: usage,
          unaccountedCents: unaccounted,
          periodEnd: new Date("2026-12-31T23:59:59Z"),
        },
      });
    expect(limit("100", "50")).toMatchObject({
      state: "allowed",
      headroom: { cents: "150", reason: "spending_limit" },
    });
    const d = limit("250", "50");
    expect(d).toMatchObject({ state: "blocked", reason: "spending_limit" });
    expect(d.message).toBe(
      "You have reached your spending limit of 3.00 USD for this billing period. It resets on 2026-12-31; ask for a higher limit to continue now.",
    );
  });

  it("lets a manual override win either way, keeping the computed decision", () => {
    const exhausted = { ...base, wallet: { currency: "USD", ongoingBalanceCents: 0, unaccountedCents: "1" } };
    const allowed = decide({ ...exhausted, override: { state: "allowed", reason: "goodwill" } });
    expect(allowed).toMatchObject({
      state: "allowed",
      computed: { state: "blocked", reason: "wallet_exhausted" },
      headroom: null,
    });
    const blocked = decide({ ...base, override: { state: "blocked", reason: "abuse" } });
    expect(blocked).toMatchObject({ state: "blocked", reason: "manual", computed: { state: "allowed" } });
    expect(blocked.message).toBe(
      "Access to this account is suspended: abuse. Contact support to restore it.",
    );
  });

  it("prices a call against credit exactly as cost mode bills it (precise_total_amount_cents)", () => {
    for (const [cost, markup] of [
      [0.00375, 0],
      [0.000000123, 20],
      [1.23456789, 12.5],
    ] as const) {
      const settings = loadSettings({ LAGO_BILLING_MODE: "cost", LAGO_COST_MARKUP_PERCENT: String(markup) });
      const [event] = toLagoEvents(
        {
          requestId: "r",
          timestamp: 1,
          customerId: "c",
          userId: null,
          teamId: null,
          orgId: null,
          apiKeyHash: null,
          model: "m",
          provider: null,
          callType: null,
          status: "success",
          tokensInput: 1,
          tokensOutput: 1,
          tokensCached: 0,
          tokensCacheWrite: 0,
          tokensReasoning: 0,
          totalTokens: 2,
          costUsd: String(cost),
          costSource: "reported",
          billable: true,
          notBillableReason: null,
          source: "api",
          metadata: {},
        },
        settings.lago,
      );
      expect(Number(billedCents(String(cost), settings.entitlements.priceMarkupPercent))).toBeCloseTo(
        Number(event?.preciseTotalAmountCents),
        10,
      );
    }
    expect(billedCents("0.00375", 0)).toBe("0.375");
    expect(loadSettings({ LAGO_COST_MARKUP_PERCENT: "20" }).entitlements.priceMarkupPercent).toBe(0); // tokens mode
  });
});

describe("counted-until: which of our usage Lago's numbers already include", () => {
  const now = new Date("2026-12-01T12:00:00Z");
  const t = (s: number) => new Date(now.getTime() - s * 1000);
  it("takes a first reading as up to one Lago recompute period old", () => {
    const first = { fingerprint: null, countedUntil: null, readAt: null };
    expect(nextCountedUntil(first, "f1", now, undefined)).toEqual(
      new Date(now.getTime() - LAGO_RECOMPUTE_WINDOW_MS),
    );
    expect(nextCountedUntil(first, "f1", now, t(30))).toEqual(t(30)); // matched within the window
    expect(nextCountedUntil(first, "f1", now, t(3600))).toEqual(
      new Date(now.getTime() - LAGO_RECOMPUTE_WINDOW_MS),
    );
  });
  it("keeps it while Lago's numbers do not change", () => {
    const prev = { fingerprint: "f1", countedUntil: t(300), readAt: t(60) };
    expect(nextCountedUntil(prev, "f1", now, undefined)).toEqual(t(300));
    expect(nextCountedUntil(prev, null, now, undefined)).toBeNull();
  });
  it("moves it, when they change, to where Lago's count ends in our ledger, within the window since the last reading", () => {
    const prev = { fingerprint: "f1", countedUntil: t(300), readAt: t(60) };
    expect(nextCountedUntil(prev, "f2", now, t(20))).toEqual(t(20)); // Lago recomputed 20 s ago
    expect(nextCountedUntil(prev, "f2", now, t(200))).toEqual(t(60)); // cannot be before the last reading
    expect(nextCountedUntil(prev, "f2", now, null)).toEqual(now); // Lago counted all we delivered
    expect(nextCountedUntil(prev, "f2", now, undefined)).toEqual(t(60)); // no billing period: the cautious end
  });
});

describe("Lago objects", () => {
  const wallet = (over: Partial<WalletReading>): WalletReading => ({
    lagoId: "w",
    customerId: "c",
    status: "active",
    currency: "USD",
    balanceCents: 100,
    ongoingBalanceCents: 100,
    ongoingUsageBalanceCents: 0,
    creditsOngoingBalance: "1",
    rateAmount: "1",
    lastBalanceSyncAt: new Date("2026-12-01T10:00:00Z"),
    ...over,
  });
  it("orders wallet states: terminated is final, then the balance sync, then Lago's growing ongoing usage", () => {
    expect(
      compareWallets(wallet({ status: "terminated" }), wallet({ lastBalanceSyncAt: new Date("2027-01-01") })),
    ).toBeGreaterThan(0);
    expect(
      compareWallets(wallet({}), wallet({ lastBalanceSyncAt: new Date("2026-12-01T11:00:00Z") })),
    ).toBeLessThan(0);
    expect(
      compareWallets(wallet({ ongoingUsageBalanceCents: 30 }), wallet({ ongoingUsageBalanceCents: 20 })),
    ).toBeGreaterThan(0);
    expect(compareWallets(wallet({}), wallet({}))).toBe(0);
  });

  it("derives the subscription status that decides access (static mapping: only the billed subscription)", () => {
    const subs = [
      { external_id: "cust", status: "terminated", terminated_at: new Date("2026-11-01") },
      { external_id: "other", status: "active", terminated_at: null },
    ];
    expect(subscriptionStatusOf(subs, "cust")).toEqual({
      status: "terminated",
      endedAt: new Date("2026-11-01"),
    });
    expect(subscriptionStatusOf(subs, null).status).toBe("active");
    expect(subscriptionStatusOf([], "cust").status).toBe("missing");
    expect(
      subscriptionStatusOf([{ external_id: "cust", status: "pending", terminated_at: null }], "cust").status,
    ).toBe("pending");
  });

  it("takes the lowest one-time hard-limit threshold of current_usage_amount alerts as the limit", () => {
    expect(
      limitFromAlerts(
        [
          {
            alertType: "lifetime_usage_amount",
            code: "a",
            thresholds: [{ code: "hard_limit", value: "10", recurring: false }],
          },
          {
            alertType: "current_usage_amount",
            code: "b",
            thresholds: [
              { code: "soft", value: "100", recurring: false },
              { code: "hard_limit", value: "900", recurring: false },
              { code: "hard_limit", value: "500.5", recurring: false },
              { code: "hard_limit", value: "50", recurring: true },
            ],
          },
        ],
        "hard_limit",
      ),
    ).toBe("500.5");
    expect(limitFromAlerts([], "hard_limit")).toBeNull();
  });

  it("reads each handled webhook type into what it tells, and knows Lago's other types", () => {
    const w = {
      lago_id: "w1",
      external_customer_id: "c1",
      status: "active",
      balance_cents: 5,
      ongoing_balance_cents: 3,
    };
    expect(
      parseLagoWebhook({ webhook_type: "wallet.depleted_ongoing_balance", object_type: "wallet", wallet: w }),
    ).toMatchObject({
      customerId: "c1",
      fact: { kind: "wallet", wallet: { lagoId: "w1", balanceCents: 5, ongoingBalanceCents: 3 } },
    });
    expect(
      parseLagoWebhook({
        webhook_type: "wallet_transaction.updated",
        object_type: "wallet_transaction",
        wallet_transaction: { lago_wallet_id: "w1", status: "settled" },
      }).fact,
    ).toEqual({ kind: "wallet_transaction", walletId: "w1", status: "settled", transactionType: null });
    const s = {
      lago_id: "s1",
      external_id: "c1",
      external_customer_id: "c1",
      status: "terminated",
      terminated_at: "2026-11-30T00:00:00Z",
    };
    expect(
      parseLagoWebhook({
        webhook_type: "subscription.terminated",
        object_type: "subscription",
        subscription: s,
      }).fact,
    ).toMatchObject({
      kind: "subscription",
      subscription: { status: "terminated", terminatedAt: new Date("2026-11-30T00:00:00Z") },
    });
    expect(
      parseLagoWebhook({
        webhook_type: "subscription.usage_threshold_reached",
        object_type: "subscription",
        subscription: s,
      }).fact,
    ).toEqual({
      kind: "refresh",
      customerId: "c1",
    });
    const alert = {
      customer_external_id: "c1",
      subscription_external_id: "c1",
      alert_type: "current_usage_amount",
      current_value: "650.0",
      crossed_thresholds: [{ code: "hard_limit", value: "500.0", recurring: false }],
      triggered_at: "2026-12-01T10:00:00Z",
    };
    expect(
      parseLagoWebhook({
        webhook_type: "alert.triggered",
        object_type: "triggered_alert",
        triggered_alert: alert,
      }).fact,
    ).toMatchObject({
      kind: "alert",
      resolved: false,
      thresholds: [{ code: "hard_limit", value: "500.0" }],
      currentValueCents: "650.0",
    });
    expect(
      parseLagoWebhook({ webhook_type: "invoice.created", object_type: "invoice", invoice: {} }).fact,
    ).toEqual({ kind: "ignored" });
    expect(parseLagoWebhook({ webhook_type: "ufo.sighted" }).fact).toEqual({ kind: "unknown" });
    expect(parseLagoWebhook("not an object").fact).toEqual({ kind: "unknown" });
  });
});

describe("webhook signatures", () => {
  const body = Buffer.from(
    JSON.stringify({ webhook_type: "wallet.created", object_type: "wallet", wallet: {} }),
  );
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const pem = publicKey.export({ type: "spki", format: "pem" }).toString();
  const b64 = (x: string | Buffer) => Buffer.from(x).toString("base64url");
  const jwt = (claims: object, header: object = { alg: "RS256" }) => {
    const h = `${b64(JSON.stringify(header))}.${b64(JSON.stringify(claims))}`;
    return `${h}.${b64(sign("RSA-SHA256", Buffer.from(h), privateKey))}`;
  };

  it("verifies Base64(HMAC-SHA256(key, raw body)) in constant time", () => {
    const sig = createHmac("sha256", "k3y").update(body).digest("base64");
    expect(verifyHmac(body, sig, "k3y")).toBe(true);
    expect(verifyHmac(body, sig, "other")).toBe(false);
    expect(verifyHmac(Buffer.concat([body, Buffer.from(" ")]), sig, "k3y")).toBe(false);
    expect(verifyHmac(body, "", "k3y")).toBe(false);
  });

  it("verifies an RS256 JWT whose data claim is the body, and nothing else", () => {
    const key = parsePublicKey(pem);
    expect(verifyJwt(body, jwt({ data: body.toString(), iss: "https://api.getlago.com" }), key)).toEqual({
      ok: true,
    });
    expect(verifyJwt(Buffer.from("{}"), jwt({ data: body.toString() }), key)).toMatchObject({
      ok: false,
      reason: /not the signed payload/,
    });
    expect(verifyJwt(body, jwt({ data: body.toString() }, { alg: "HS256" }), key)).toMatchObject({
      ok: false,
      reason: /not RS256/,
    });
    const none = `${b64(JSON.stringify({ alg: "none" }))}.${b64(JSON.stringify({ data: body.toString() }))}.`;
    expect(verifyJwt(body, none, key).ok).toBe(false);
    const other = parsePublicKey(
      generateKeyPairSync("rsa", { modulusLength: 2048 })
        .publicKey.export({ type: "spki", format: "pem" })
        .toString(),
    );
    expect(verifyJwt(body, jwt({ data: body.toString() }), other)).toMatchObject({
      ok: false,
      reason: /does not verify/,
    });
    expect(verifyJwt(body, "garbage", key).ok).toBe(false);
  });

  it("reads Lago's public key as a PEM or as the base64 json_public_key serves (with Ruby's line breaks)", () => {
    const encode64 = `${Buffer.from(pem)
      .toString("base64")
      .match(/.{1,60}/g)
      ?.join("\n")}\n`;
    expect(parsePublicKey(encode64).export({ type: "spki", format: "pem" })).toEqual(
      publicKey.export({ type: "spki", format: "pem" }),
    );
    expect(() => parsePublicKey("bm90IGEga2V5")).toThrow(/not a PEM/);
  });
});

describe("settings", () => {
  it("are off by default and refuse enforcement without Lago or Redis, saying what to set", () => {
    expect(loadSettings({}).entitlements).toMatchObject({
      mode: "off",
      failMode: "open",
      minBalanceCents: 0,
      refreshIntervalSeconds: 60,
      limitThresholdCode: "hard_limit",
      redisPrefix: "lago-billing:entitlements:v1:",
    });
    expect(() => loadSettings({ ENFORCEMENT: "enforce" })).toThrow(/LAGO_API_URL and LAGO_API_KEY/);
    expect(() =>
      loadSettings({ ENFORCEMENT: "observe", LAGO_API_URL: "http://l", LAGO_API_KEY: "k" }),
    ).toThrow(/REDIS_URL/);
    expect(() => loadSettings({ ENFORCEMENT: "on" })).toThrow(/ENFORCEMENT.*off, observe, enforce/);
    expect(() => loadSettings({ ENFORCEMENT_FAIL_MODE: "maybe" })).toThrow(/open, closed/);
    expect(
      loadSettings({ LAGO_BILLING_MODE: "cost", LAGO_COST_MARKUP_PERCENT: "15" }).entitlements
        .priceMarkupPercent,
    ).toBe(15);
  });
});
