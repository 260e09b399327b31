import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { LagoDouble } from "../support/lago-double.ts";

const KEY = "lago-test-key";

interface Reply {
  status: number;
  headers: Headers;
  // biome-ignore lint/suspicious/noExplicitAny: JSON bodies are asserted structurally by the tests
  body: any;
}

async function call(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  key: string | null = KEY,
): Promise<Reply> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (key !== null) headers.authorization = `Bearer ${key}`;
  const res = await fetch(`${base}${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
}

function ev(tx: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    transaction_id: tx,
    external_subscription_id: "sub-1",
    code: "llm_tokens",
    timestamp: 1_700_000_000,
    properties: { tokens: 10, model: "gpt-4o-mini", type: "input" },
    ...extra,
  };
}

describe("LagoDouble", () => {
  let lago: LagoDouble;
  const post = (path: string, body: unknown, key: string | null = KEY) =>
    call(lago.url, "POST", path, body, key);
  const get = (path: string, key: string | null = KEY) => call(lago.url, "GET", path, undefined, key);

  beforeAll(async () => {
    lago = await LagoDouble.start();
  });
  afterAll(async () => {
    await lago.close();
  });
  beforeEach(() => {
    lago.reset({ entities: true });
    lago.setApiKey(KEY);
    lago.latencyMs = 0;
    lago.setRateLimit(null);
    lago.eventStore = "postgres";
    lago.batchMax = 100;
    lago.rateLimitHeaderStyle = "cloud";
  });

  describe("auth", () => {
    it("answers 401 without or with a wrong bearer key, /health is open", async () => {
      const none = await post("/api/v1/events/batch", { events: [ev("a")] }, null);
      expect(none.status).toBe(401);
      expect(none.body).toEqual({ status: 401, error: "Unauthorized" });
      const wrong = await post("/api/v1/events/batch", { events: [ev("a")] }, "nope");
      expect(wrong.status).toBe(401);
      expect((await get("/api/v1/organizations", "nope")).status).toBe(401);
      expect((await get("/health", null)).status).toBe(200);
      expect(lago.eventCount).toBe(0);
    });

    it("setApiKey simulates a revoked key", async () => {
      expect((await get("/api/v1/organizations")).body).toEqual({ organizations: [{ name: "Test org" }] });
      lago.setApiKey("rotated");
      expect((await post("/api/v1/events/batch", { events: [ev("a")] })).status).toBe(401);
      expect((await post("/api/v1/events/batch", { events: [ev("a")] }, "rotated")).status).toBe(200);
    });

    it("forbid(true) answers 403 write_action_not_allowed_for_event", async () => {
      lago.forbid(true);
      const r = await post("/api/v1/events/batch", { events: [ev("a")] });
      expect(r.status).toBe(403);
      expect(r.body).toEqual({ status: 403, error: "Forbidden", code: "write_action_not_allowed_for_event" });
      lago.forbid(false);
      expect((await post("/api/v1/events/batch", { events: [ev("a")] })).status).toBe(200);
    });
  });

  describe("POST /api/v1/events/batch", () => {
    it("stores a valid batch and echoes the events", async () => {
      const r = await post("/api/v1/events/batch", {
        events: [ev("t1"), ev("t2", { timestamp: "1700000000.123", precise_total_amount_cents: "12.345" })],
      });
      expect(r.status).toBe(200);
      expect(r.body.events).toHaveLength(2);
      expect(r.body.events[0]).toMatchObject({
        transaction_id: "t1",
        code: "llm_tokens",
        external_subscription_id: "sub-1",
        timestamp: "2023-11-14T22:13:20.000Z",
      });
      expect(r.body.events[1].timestamp).toBe("2023-11-14T22:13:20.123Z");
      expect(lago.eventCount).toBe(2);
      expect(lago.events[1]?.precise_total_amount_cents).toBe("12.345");
      expect(lago.events[0]?.receivedAt).toBeGreaterThan(0);
      expect(lago.batchRequests).toBe(1);
      expect(lago.requests.at(-1)).toMatchObject({
        path: "/api/v1/events/batch",
        status: 200,
        eventCount: 2,
      });
    });

    it("accepts exactly batchMax events and rejects one more with too_many_events", async () => {
      const hundred = Array.from({ length: 100 }, (_, i) => ev(`ok-${i}`));
      expect((await post("/api/v1/events/batch", { events: hundred })).status).toBe(200);
      const many = Array.from({ length: 101 }, (_, i) => ev(`many-${i}`));
      const r = await post("/api/v1/events/batch", { events: many });
      expect(r.status).toBe(422);
      expect(r.body).toEqual({
        status: 422,
        error: "Unprocessable Entity",
        code: "validation_errors",
        error_details: { events: ["too_many_events"] },
      });
      expect(lago.eventCount).toBe(100);
    });

    it("rejects an empty batch with no_events and a missing root with 400", async () => {
      const empty = await post("/api/v1/events/batch", { events: [] });
      expect(empty.status).toBe(422);
      expect(empty.body.error_details).toEqual({ events: ["no_events"] });
      expect((await post("/api/v1/events/batch", { event: ev("x") })).status).toBe(400);
    });

    it("is all or nothing, with errors keyed by index", async () => {
      const r = await post("/api/v1/events/batch", {
        events: [
          ev("good-0"),
          ev("bad-ts", { timestamp: "2024-01-01T00:00:00Z" }),
          ev("good-2"),
          { code: "llm_tokens", external_subscription_id: "sub-1", timestamp: 1 },
          ev("bad-amount", { precise_total_amount_cents: "abc" }),
        ],
      });
      expect(r.status).toBe(422);
      expect(r.body.code).toBe("validation_errors");
      expect(r.body.error_details).toEqual({
        "1": { timestamp: ["invalid_format"] },
        "3": { transaction_id: ["value_is_mandatory"] },
        "4": { precise_total_amount_cents: ["invalid_value"] },
      });
      expect(lago.eventCount).toBe(0);
      expect(lago.rejected422).toBe(1);
      // The good events were not stored, so they can be sent again.
      expect((await post("/api/v1/events/batch", { events: [ev("good-0"), ev("good-2")] })).status).toBe(200);
    });

    it("rejects ISO timestamps with invalid_format", async () => {
      const r = await post("/api/v1/events/batch", {
        events: [ev("iso", { timestamp: "2024-05-01T10:00:00.000Z" })],
      });
      expect(r.status).toBe(422);
      expect(r.body.error_details).toEqual({ "0": { timestamp: ["invalid_format"] } });
    });

    it("reports value_already_exist on a resend, forever, and rejects the whole batch", async () => {
      expect((await post("/api/v1/events/batch", { events: [ev("dup-1"), ev("dup-2")] })).status).toBe(200);
      const again = await post("/api/v1/events/batch", {
        events: [ev("new-1"), ev("dup-2", { timestamp: 5 })],
      });
      expect(again.status).toBe(422);
      expect(again.body.error_details).toEqual({ "1": { transaction_id: ["value_already_exist"] } });
      expect(lago.eventCount).toBe(2);
      // Same transaction_id under another subscription is a different key.
      expect(
        (await post("/api/v1/events/batch", { events: [ev("dup-1", { external_subscription_id: "sub-2" })] }))
          .status,
      ).toBe(200);
      expect(lago.countByTransaction().get("dup-1")).toBe(2);
    });

    it("reports duplicates inside one batch on the second and later copies", async () => {
      const r = await post("/api/v1/events/batch", { events: [ev("x"), ev("y"), ev("x"), ev("x")] });
      expect(r.status).toBe(422);
      expect(r.body.error_details).toEqual({
        "2": { transaction_id: ["value_already_exist"] },
        "3": { transaction_id: ["value_already_exist"] },
      });
      expect(lago.eventCount).toBe(0);
    });

    it("never dedupes events without a subscription, and counts acceptedTwice", async () => {
      const noSub = { transaction_id: "ns", code: "llm_tokens", timestamp: 1_700_000_000 };
      expect((await post("/api/v1/events/batch", { events: [noSub, noSub] })).status).toBe(200);
      expect(lago.countByTransaction().get("ns")).toBe(2);
      expect(lago.stats().acceptedTwice).toBe(1);
      expect(lago.stats().duplicatesStored).toBe(1);
      expect(lago.eventsWithUnknownSubscription()).toHaveLength(2);
    });

    it("accepts unknown subscriptions with 200 but lets tests find them", async () => {
      lago.addSubscription("sub-1", "cust-1");
      const r = await post("/api/v1/events/batch", {
        events: [ev("known"), ev("unknown", { external_subscription_id: "ghost" })],
      });
      expect(r.status).toBe(200);
      expect(lago.eventsWithUnknownSubscription().map((e) => e.transaction_id)).toEqual(["unknown"]);
      expect(r.body.events[0].lago_subscription_id).toBe(lago.subscriptions.get("sub-1")?.lago_id);
    });

    it("answers 429 with X-RateLimit-* headers over the rate limit", async () => {
      lago.setRateLimit(3);
      const statuses: number[] = [];
      let limited: Reply | undefined;
      for (let i = 0; i < 5; i++) {
        const r = await post("/api/v1/events/batch", { events: [ev(`rl-${i}`)] });
        statuses.push(r.status);
        if (r.status === 429) limited = r;
      }
      expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(3);
      expect(statuses.filter((s) => s === 429).length).toBeGreaterThanOrEqual(1);
      expect(limited?.body).toEqual({ status: 429, error: "Too Many Requests" });
      expect(limited?.headers.get("x-ratelimit-limit")).toBe("3");
      expect(limited?.headers.get("x-ratelimit-remaining")).toBe("0");
      const reset = Number(limited?.headers.get("x-ratelimit-reset"));
      expect(Number.isInteger(reset)).toBe(true);
      expect(reset).toBeGreaterThanOrEqual(1);
      expect(lago.count429).toBe(statuses.filter((s) => s === 429).length);
      expect(lago.eventCount).toBe(statuses.filter((s) => s === 200).length);
    });

    it("failNext(n, status) fails the next n event requests", async () => {
      lago.failNext(2, 503);
      const a = await post("/api/v1/events/batch", { events: [ev("f")] });
      const b = await post("/api/v1/events", { event: ev("f") });
      const c = await post("/api/v1/events/batch", { events: [ev("f")] });
      expect([a.status, b.status, c.status]).toEqual([503, 503, 200]);
      expect(a.body).toEqual({ status: 503, error: "Service Unavailable" });
      expect(lago.eventCount).toBe(1);
    });

    it("error500 mode answers 500 with a JSON body", async () => {
      lago.setMode("error500");
      const r = await post("/api/v1/events/batch", { events: [ev("e")] });
      expect(r.status).toBe(500);
      expect(r.body.status).toBe(500);
      lago.setMode("ok");
      expect((await post("/api/v1/events/batch", { events: [ev("e")] })).status).toBe(200);
    });

    it("reset mode destroys the socket (fetch fails) and stores nothing", async () => {
      lago.setMode("reset");
      await expect(post("/api/v1/events/batch", { events: [ev("r")] })).rejects.toThrow();
      expect(lago.eventCount).toBe(0);
      expect(lago.resets).toBe(1);
      lago.setMode("ok");
      expect((await post("/api/v1/events/batch", { events: [ev("r")] })).status).toBe(200);
    });

    it("hang mode holds requests until the mode changes", async () => {
      lago.setMode("hang");
      let settled = false;
      const pending = post("/api/v1/events/batch", { events: [ev("h")] }).then((r) => {
        settled = true;
        return r;
      });
      await new Promise((r) => setTimeout(r, 150));
      expect(settled).toBe(false);
      const aborted = fetch(`${lago.url}/api/v1/events/batch`, {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}` },
        body: JSON.stringify({ events: [ev("h2")] }),
        signal: AbortSignal.timeout(100),
      });
      await expect(aborted).rejects.toThrow();
      lago.setMode("ok");
      expect((await pending).status).toBe(200);
    });

    it("applies latencyMs", async () => {
      lago.latencyMs = 120;
      const t0 = performance.now();
      expect((await post("/api/v1/events/batch", { events: [ev("slow")] })).status).toBe(200);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(110);
    });
  });

  // Each case names the Lago source it follows (getlago/lago-api).
  describe("contract: app/services/events/create_batch_service.rb", () => {
    it("reports validation errors first; duplicates only once every event is valid", async () => {
      expect((await post("/api/v1/events/batch", { events: [ev("have")] })).status).toBe(200);
      const mixed = await post("/api/v1/events/batch", {
        events: [ev("have"), ev("bad", { timestamp: "yesterday" })],
      });
      expect(mixed.status).toBe(422);
      expect(mixed.body.error_details).toEqual({ "1": { timestamp: ["invalid_format"] } });
      const valid = await post("/api/v1/events/batch", { events: [ev("have"), ev("fresh")] });
      expect(valid.body.error_details).toEqual({ "0": { transaction_id: ["value_already_exist"] } });
      expect(lago.eventCount).toBe(1);
    });

    it("refuses more than LAGO_EVENTS_BATCH_MAX_LENGTH events before looking at them", async () => {
      lago.batchMax = 30;
      const invalid = Array.from({ length: 31 }, () => ({ transaction_id: "", code: "" }));
      const r = await post("/api/v1/events/batch", { events: invalid });
      expect(r.body.error_details).toEqual({ events: ["too_many_events"] });
      const thirty = await post("/api/v1/events/batch", { events: invalid.slice(0, 30) });
      expect(Object.keys(thirty.body.error_details)).toHaveLength(30);
      expect(lago.eventCount).toBe(0);
    });

    it("with the ClickHouse store, answers 200 to duplicates and dedupes at query time on transaction id and timestamp", async () => {
      lago.eventStore = "clickhouse";
      lago.addMetric("llm_tokens");
      lago.addSubscription("sub-1", "c1");
      expect((await post("/api/v1/events/batch", { events: [ev("ch")] })).status).toBe(200);
      expect((await post("/api/v1/events/batch", { events: [ev("ch")] })).status).toBe(200);
      expect(lago.eventCount).toBe(2);
      expect(lago.billedEvents()).toHaveLength(1);
      // The same transaction id with another timestamp is billed again.
      await post("/api/v1/events/batch", { events: [ev("ch", { timestamp: 1_700_000_001 })] });
      expect(lago.billedEvents()).toHaveLength(2);
    });

    it("loseResponses(n) stores the events and drops the answer", async () => {
      lago.loseResponses(1);
      await expect(post("/api/v1/events/batch", { events: [ev("lost")] })).rejects.toThrow();
      expect(lago.eventCount).toBe(1);
      expect((await post("/api/v1/events/batch", { events: [ev("lost")] })).status).toBe(422);
      expect(lago.stats().responsesLost).toBe(1);
    });
  });

  describe("contract: app/models/event.rb#subscription (billing span)", () => {
    it("bills an event only between started_at and terminated_at of a subscription with its id", async () => {
      lago.addMetric("llm_tokens");
      const start = Date.UTC(2026, 0, 10) / 1000;
      const sub = lago.addSubscription("sub-1", "c1", "p", { subscriptionAt: new Date(start * 1000) });
      await post("/api/v1/events/batch", {
        events: [
          ev("before", { timestamp: start - 1 }),
          ev("at", { timestamp: start }),
          ev("in", { timestamp: start + 50 }),
        ],
      });
      lago.terminateSubscription("sub-1", new Date((start + 100) * 1000));
      await post("/api/v1/events/batch", { events: [ev("after", { timestamp: start + 101 })] });
      expect(lago.unbilledEvents().map((e) => e.transaction_id)).toEqual(["before", "after"]);
      expect(sub.status).toBe("terminated");
      // A new subscription may reuse a terminated one's external id; each bills its own span.
      lago.addSubscription("sub-1", "c1", "p", { subscriptionAt: new Date((start + 101) * 1000) });
      expect(lago.unbilledEvents().map((e) => e.transaction_id)).toEqual(["before"]);
      expect(lago.billedEvents()).toHaveLength(3);
    });
  });

  describe("contract: app/controllers/api/v1/subscriptions_controller.rb#show", () => {
    it("finds only active subscriptions unless ?status= asks for another", async () => {
      const future = new Date(Date.now() + 86_400_000);
      lago.addSubscription("sub-p", "c1", "p", { subscriptionAt: future });
      expect((await get("/api/v1/subscriptions/sub-p")).status).toBe(404);
      const pending = await get("/api/v1/subscriptions/sub-p?status=pending");
      expect(pending.body.subscription).toMatchObject({ status: "pending", started_at: null });
      lago.addSubscription("sub-t", "c1", "p");
      lago.terminateSubscription("sub-t");
      expect((await get("/api/v1/subscriptions/sub-t")).status).toBe(404);
      const terminated = await get("/api/v1/subscriptions/sub-t?status=terminated");
      expect(terminated.body.subscription.status).toBe("terminated");
      expect(terminated.body.subscription.terminated_at).not.toBeNull();
      const list = await get(
        "/api/v1/subscriptions?external_customer_id=c1&status[]=pending&status[]=terminated",
      );
      expect(list.body.subscriptions.map((x: { external_id: string }) => x.external_id).sort()).toEqual([
        "sub-p",
        "sub-t",
      ]);
      lago.activateSubscription("sub-p");
      expect((await get("/api/v1/subscriptions/sub-p")).body.subscription.status).toBe("active");
    });
  });

  describe("contract: 429s (app/controllers/concerns/api_errors.rb; Lago Cloud; proxies)", () => {
    const limited = async () => {
      lago.setRateLimit(1);
      await post("/api/v1/events/batch", { events: [ev("a")] });
      const r = await post("/api/v1/events/batch", { events: [ev("b")] });
      expect(r.status).toBe(429);
      return r.headers;
    };
    it("cloud: X-RateLimit-Reset in seconds", async () => {
      const h = await limited();
      expect(Number(h.get("x-ratelimit-reset"))).toBeLessThanOrEqual(1);
    });
    it("none: self-hosted Lago sends no rate-limit headers", async () => {
      lago.rateLimitHeaderStyle = "none";
      const h = await limited();
      expect(h.get("x-ratelimit-reset")).toBeNull();
      expect(h.get("retry-after")).toBeNull();
    });
    it("epoch: a proxy's X-RateLimit-Reset as a Unix time", async () => {
      lago.rateLimitHeaderStyle = "epoch";
      const h = await limited();
      expect(Number(h.get("x-ratelimit-reset"))).toBeGreaterThan(Date.now() / 1000 - 1);
    });
    it("retry-after: a proxy's Retry-After", async () => {
      lago.rateLimitHeaderStyle = "retry-after";
      const h = await limited();
      expect(h.get("retry-after")).toBe("1");
    });
  });

  describe("POST /api/v1/events", () => {
    it("validates like the batch endpoint without index keys", async () => {
      expect((await post("/api/v1/events", { event: ev("s1") })).status).toBe(200);
      const dup = await post("/api/v1/events", { event: ev("s1") });
      expect(dup.status).toBe(422);
      expect(dup.body.error_details).toEqual({ transaction_id: ["value_already_exist"] });
      const iso = await post("/api/v1/events", { event: ev("s2", { timestamp: "2024-01-01" }) });
      expect(iso.body.error_details).toEqual({ timestamp: ["invalid_format"] });
      expect((await post("/api/v1/events", { events: [ev("s3")] })).status).toBe(400);
      // Every authorized request to the endpoint counts, accepted or rejected (the 400 included).
      expect(lago.singleRequests).toBe(4);
      expect(lago.eventCount).toBe(1);
    });

    it("accepts LiteLLM's callback shape and stamps the receive time", async () => {
      const before = Date.now();
      const r = await post("/api/v1/events", {
        event: {
          transaction_id: "3f1c5a52-0000-4000-8000-000000000000",
          external_customer_id: "end-user-1",
          code: "litellm_usage",
          properties: {
            model: "gpt-4o-mini",
            response_cost: 0.0001,
            prompt_tokens: 12,
            completion_tokens: 8,
          },
        },
      });
      expect(r.status).toBe(200);
      expect(r.body.event.transaction_id).toBe("3f1c5a52-0000-4000-8000-000000000000");
      const stored = lago.events[0];
      expect(stored?.timestampDefaulted).toBe(true);
      expect(stored?.external_subscription_id).toBeNull();
      expect(stored?.external_customer_id).toBe("end-user-1");
      expect((stored?.timestamp ?? 0) * 1000).toBeGreaterThanOrEqual(before - 1);
    });
  });

  describe("customers, subscriptions, metrics, plans", () => {
    it("creates and looks up subscriptions", async () => {
      expect((await get("/api/v1/subscriptions/sub-a")).body).toEqual({
        status: 404,
        error: "Not Found",
        code: "subscription_not_found",
      });
      const unknownPlan = await post("/api/v1/subscriptions", {
        subscription: { external_customer_id: "c1", plan_code: "nope", external_id: "sub-a" },
      });
      expect(unknownPlan.status).toBe(404);
      expect(unknownPlan.body.code).toBe("plan_not_found");

      const metric = await post("/api/v1/billable_metrics", {
        billable_metric: {
          name: "LLM tokens",
          code: "llm_tokens",
          aggregation_type: "sum_agg",
          field_name: "tokens",
          filters: [{ key: "type", values: ["input", "output"] }],
        },
      });
      expect(metric.status).toBe(200);
      const dupMetric = await post("/api/v1/billable_metrics", {
        billable_metric: { name: "x", code: "llm_tokens", aggregation_type: "sum_agg", field_name: "tokens" },
      });
      expect(dupMetric.status).toBe(422);
      expect(dupMetric.body.error_details).toEqual({ code: ["value_already_exist"] });
      expect((await get("/api/v1/billable_metrics/llm_tokens")).body.billable_metric.field_name).toBe(
        "tokens",
      );
      expect((await get("/api/v1/billable_metrics/none")).body.code).toBe("billable_metric_not_found");

      const plan = await post("/api/v1/plans", {
        plan: {
          name: "Pro",
          code: "pro",
          interval: "monthly",
          amount_cents: 0,
          amount_currency: "USD",
          charges: [{ billable_metric_id: metric.body.billable_metric.lago_id, charge_model: "standard" }],
        },
      });
      expect(plan.status).toBe(200);
      // app/serializers/v1/charge_serializer.rb: lago_billable_metric_id and billable_metric_code.
      expect(plan.body.plan.charges[0]).toMatchObject({
        lago_billable_metric_id: metric.body.billable_metric.lago_id,
        billable_metric_code: "llm_tokens",
      });
      expect(plan.body.plan.charges[0]).not.toHaveProperty("billable_metric_id");
      expect((await post("/api/v1/plans", { plan: plan.body.plan })).status).toBe(422);
      expect(
        (await call(lago.url, "PUT", "/api/v1/plans/pro", { plan: { name: "Pro 2" } })).body.plan.name,
      ).toBe("Pro 2");

      const sub = await post("/api/v1/subscriptions", {
        subscription: {
          external_customer_id: "c1",
          plan_code: "pro",
          external_id: "sub-a",
          subscription_at: "2024-01-01T00:00:00Z",
        },
      });
      expect(sub.status).toBe(200);
      expect(sub.body.subscription).toMatchObject({
        external_id: "sub-a",
        external_customer_id: "c1",
        plan_code: "pro",
        status: "active",
        subscription_at: "2024-01-01T00:00:00Z",
      });
      const again = await post("/api/v1/subscriptions", {
        subscription: { external_customer_id: "c1", plan_code: "pro", external_id: "sub-a" },
      });
      expect(again.body.subscription.lago_id).toBe(sub.body.subscription.lago_id);

      // The customer was created on the fly.
      const cust = await get("/api/v1/customers/c1");
      expect(cust.status).toBe(200);
      expect(cust.body.customer.external_id).toBe("c1");
      expect((await get("/api/v1/customers/zz")).body.code).toBe("customer_not_found");

      expect((await get("/api/v1/subscriptions/sub-a")).body.subscription.status).toBe("active");
      const list = await get("/api/v1/subscriptions?external_customer_id=c1&status[]=active");
      expect(list.body.subscriptions.map((s: { external_id: string }) => s.external_id)).toEqual(["sub-a"]);
      expect(list.body.meta.total_count).toBe(1);
      lago.terminateSubscription("sub-a");
      expect(
        (await get("/api/v1/subscriptions?external_customer_id=c1&status[]=active")).body.subscriptions,
      ).toEqual([]);
    });

    it("upserts customers", async () => {
      const a = await post("/api/v1/customers", {
        customer: { external_id: "u1", name: "A", currency: "USD" },
      });
      const b = await post("/api/v1/customers", { customer: { external_id: "u1", name: "B" } });
      expect(b.body.customer.lago_id).toBe(a.body.customer.lago_id);
      expect(b.body.customer).toMatchObject({ name: "B", currency: "USD" });
    });

    it("helpers addSubscription / addMetric", async () => {
      lago.addMetric("llm_tokens");
      lago.addSubscription("sub-h", "cust-h", "pro-h");
      expect((await get("/api/v1/subscriptions/sub-h")).body.subscription.plan_code).toBe("pro-h");
      expect((await get("/api/v1/billable_metrics/llm_tokens")).status).toBe(200);
    });
  });

  it("stores 20,000 events sent with 32 requests in flight, each once", async () => {
    const batches = 200;
    let next = 0;
    const worker = async (): Promise<void> => {
      for (;;) {
        const b = next++;
        if (b >= batches) return;
        const events = Array.from({ length: 100 }, (_, i) => ev(`tp-${b}-${i}`));
        const r = await post("/api/v1/events/batch", { events });
        expect(r.status).toBe(200);
      }
    };
    // Speed is measured by bench/delivery.ts, never asserted here.
    await Promise.all(Array.from({ length: 32 }, worker));
    expect(lago.eventCount).toBe(20_000);
    expect(lago.stats().acceptedTwice).toBe(0);
  });
});

describe("LagoDouble standalone", () => {
  it("prints its url and exposes /__control, /__stats and /__events", async () => {
    const file = fileURLToPath(new URL("../support/lago-double.ts", import.meta.url));
    const child = spawn(
      process.execPath,
      [file, "--port", "0", "--api-key", "K", "--latency-ms", "1", "--rate-limit", "500"],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    try {
      const line = await new Promise<string>((resolve, reject) => {
        const rl = createInterface({ input: child.stdout });
        rl.once("line", resolve);
        child.once("exit", (code) => reject(new Error(`exited ${code}`)));
      });
      const { url } = JSON.parse(line) as { url: string };
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect((await call(url, "POST", "/api/v1/events/batch", { events: [ev("a")] }, "K")).status).toBe(200);
      expect(
        (await call(url, "POST", "/api/v1/events/batch", { events: [ev("a")] }, "lago-test-key")).status,
      ).toBe(401);
      const ctl = await call(url, "POST", "/__control", { failNext: { n: 1, status: 502 }, apiKey: "K2" });
      expect(ctl.status).toBe(200);
      expect((await call(url, "POST", "/api/v1/events/batch", { events: [ev("b")] }, "K2")).status).toBe(502);
      expect((await call(url, "POST", "/api/v1/events/batch", { events: [ev("b")] }, "K2")).status).toBe(200);
      const stats = (await call(url, "GET", "/__stats")).body;
      expect(stats).toMatchObject({
        eventCount: 2,
        rateLimitPerSecond: 500,
        duplicatesStored: 0,
        acceptedTwice: 0,
        injectedFailures: 1,
        rejected401: 1,
      });
      const events = (await call(url, "GET", "/__events")).body.events;
      expect(events.map((e: { transaction_id: string }) => e.transaction_id)).toEqual(["a", "b"]);
    } finally {
      child.kill("SIGTERM");
    }
  });
});
