import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openPool } from "../../src/db/pool.ts";
import { Ledger } from "../../src/ingest/store.ts";
import { fromUsageEvent, type UsageEvent } from "../../src/ingest/usage-api.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { AUTH, startService, type TestService, usageEvent } from "../support/service.ts";
import { TcpProxy } from "../support/tcp-proxy.ts";

let db: TestDatabase;
let t: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  t = await startService(db.url);
});
afterAll(async () => {
  await t?.close();
  await db?.drop();
});

const post = (url: string, payload: unknown, headers: Record<string, string> = {}) =>
  t.app.inject({ method: "POST", url, payload: payload as object, headers: { ...AUTH, ...headers } });

describe("POST /webhooks/usage", () => {
  it("stores an event and its Lago events in one go, answering 202 after commit", async () => {
    const e = usageEvent({ tokens_cache_read: 40, tokens_reasoning: 10 });
    const res = await post("/webhooks/usage", e);
    expect(res.statusCode).toBe(202);
    expect(res.json()).toEqual({ accepted: 1, duplicates: 0, conflicts: 0 });
    const [row] = await db.sql`SELECT * FROM usage_events WHERE request_id = ${e.request_id as string}`;
    expect(row).toMatchObject({
      customer_id: "customer-123",
      tokens_input: "100",
      tokens_cached: "40",
      cost_usd: "0.003750000000",
    });
    const out =
      await db.sql`SELECT transaction_id, properties, event_timestamp, external_subscription_id FROM lago_events
      WHERE usage_event_id = ${row?.id} ORDER BY transaction_id`;
    expect(out.map((o) => [o.transaction_id, o.properties.tokens])).toEqual([
      [`${e.request_id}:cached_input`, 40],
      [`${e.request_id}:input`, 60],
      [`${e.request_id}:output`, 140],
      [`${e.request_id}:reasoning`, 10],
    ]);
    expect(Number(out[0]?.event_timestamp)).toBe(e.timestamp);
    expect(out[0]?.external_subscription_id).toBe("customer-123");
  });

  it("counts a repeat as a duplicate and a changed repeat as a conflict, keeping the first", async () => {
    const e = usageEvent();
    expect((await post("/webhooks/usage", e)).json()).toEqual({ accepted: 1, duplicates: 0, conflicts: 0 });
    expect((await post("/webhooks/usage", e)).json()).toEqual({ accepted: 0, duplicates: 1, conflicts: 0 });
    const changed = { ...e, tokens_output: 999, total_tokens: 1099 };
    expect((await post("/webhooks/usage", changed)).json()).toEqual({
      accepted: 0,
      duplicates: 0,
      conflicts: 1,
    });
    const rows =
      await db.sql`SELECT tokens_output FROM usage_events WHERE request_id = ${e.request_id as string}`;
    expect(rows.map((r) => r.tokens_output)).toEqual(["150"]);
    const [c] =
      await db.sql`SELECT count(*)::int AS n FROM usage_conflicts WHERE request_id = ${e.request_id as string}`;
    expect(c?.n).toBe(1);
  });

  it("stores one row under 20 concurrent identical posts", async () => {
    const e = usageEvent();
    const results = await Promise.all(Array.from({ length: 20 }, () => post("/webhooks/usage", e)));
    const bodies = results.map((r) => r.json() as { accepted: number; duplicates: number });
    expect(bodies.reduce((s, b) => s + b.accepted, 0)).toBe(1);
    expect(bodies.reduce((s, b) => s + b.duplicates, 0)).toBe(19);
    const [n] =
      await db.sql`SELECT count(*)::int AS n FROM lago_events e JOIN usage_events u ON u.id = e.usage_event_id
      WHERE u.request_id = ${e.request_id as string}`;
    expect(n?.n).toBe(2);
  });

  it("rejects bad input with a clear status and stores nothing", async () => {
    const before = await db.sql`SELECT count(*)::int AS n FROM usage_events`;
    const cases: [unknown, number, string][] = [
      [usageEvent({ tokens_input: -1 }), 422, "/tokens_input"],
      [usageEvent({ tokens_input: 1.5 }), 422, "/tokens_input"],
      [usageEvent({ total_tokens: 10 }), 422, "/total_tokens"],
      [usageEvent({ cost_usd: -0.1 }), 422, "/cost_usd"],
      [usageEvent({ cost_usd: 1e9 }), 422, "/cost_usd"],
      [usageEvent({ customer_id: "" }), 422, "/customer_id"],
      [usageEvent({ request_id: undefined }), 422, "/request_id"],
      [usageEvent({ timestamp: Date.now() }), 422, "milliseconds"],
      [usageEvent({ timestamp: Math.floor(Date.now() / 1000) + 86_400 }), 422, "future"],
      [usageEvent({ timestamp: 1_000_000_000 }), 422, "past"],
      [usageEvent({ model: "x".repeat(500) }), 422, "/model"],
      [usageEvent({ surprise: 1 }), 422, "/surprise"],
    ];
    for (const [body, status, needle] of cases) {
      const res = await post("/webhooks/usage", body);
      expect(res.statusCode, JSON.stringify(body)).toBe(status);
      expect(res.body).toContain(needle);
    }
    const bad = await t.app.inject({
      method: "POST",
      url: "/webhooks/usage",
      payload: "{not json",
      headers: { ...AUTH, "content-type": "application/json" },
    });
    expect(bad.statusCode).toBe(400);
    // The service's own error shape, not Fastify's internal codes.
    expect(bad.json()).toEqual({
      statusCode: 400,
      error: "Bad Request",
      message: "the body is not valid JSON; nothing was stored",
    });
    for (const type of ["application/x-www-form-urlencoded", "text/plain"]) {
      const wrongType = await t.app.inject({
        method: "POST",
        url: "/webhooks/usage",
        payload: "a=b",
        headers: { ...AUTH, "content-type": type },
      });
      expect(wrongType.statusCode, type).toBe(415);
      expect(wrongType.json(), type).toMatchObject({
        error: "Unsupported Media Type",
        message: expect.stringMatching(/Content-Type: application\/json/),
      });
    }
    const after = await db.sql`SELECT count(*)::int AS n FROM usage_events`;
    expect(after[0]?.n).toBe(before[0]?.n);
  });

  it("answers 413 for a body over the limit", async () => {
    const small = await startService(db.url, { INGEST_BODY_LIMIT_BYTES: "2048" });
    try {
      const res = await small.app.inject({
        method: "POST",
        url: "/webhooks/usage/batch",
        payload: { events: Array.from({ length: 20 }, () => usageEvent()) },
        headers: AUTH,
      });
      expect(res.statusCode).toBe(413);
      expect(res.json()).toMatchObject({
        error: "Payload Too Large",
        message: expect.stringMatching(/larger than 2048 bytes \(INGEST_BODY_LIMIT_BYTES\)/),
      });
      expect(res.body).not.toMatch(/FST_ERR/);
    } finally {
      await small.close();
    }
  });

  it("requires the bearer secret on every /webhooks route", async () => {
    for (const [method, url] of [
      ["POST", "/webhooks/usage"],
      ["POST", "/webhooks/usage/batch"],
      ["POST", "/webhooks/litellm"],
      ["POST", "/webhooks/reprocess"],
      ["GET", "/webhooks/stats"],
      ["GET", "/webhooks/validate"],
    ] as const) {
      const none = await t.app.inject({ method, url, payload: method === "POST" ? {} : undefined });
      expect(none.statusCode, url).toBe(401);
      const wrong = await t.app.inject({ method, url, headers: { authorization: "Bearer nope" } });
      expect(wrong.statusCode, url).toBe(401);
    }
    expect((await t.app.inject({ method: "GET", url: "/health/live" })).statusCode).toBe(200);
  });
});

describe("POST /webhooks/usage/batch", () => {
  it("stores a batch and reports duplicates inside it", async () => {
    const events = Array.from({ length: 50 }, () => usageEvent());
    events.push({ ...events[0] });
    const res = await post("/webhooks/usage/batch", { events });
    expect(res.statusCode).toBe(202);
    expect(res.json()).toEqual({ accepted: 50, duplicates: 1, conflicts: 0 });
  });

  it("is all or nothing, with per-index errors", async () => {
    const events = [
      usageEvent(),
      usageEvent({ tokens_output: -5 }),
      usageEvent(),
      usageEvent({ timestamp: Date.now() }),
    ];
    const res = await post("/webhooks/usage/batch", { events });
    expect(res.statusCode).toBe(422);
    const body = res.json() as { errors: { index: number; path: string }[] };
    expect(body.errors.map((e) => e.index).sort()).toEqual([1, 3]);
    expect(body.errors.find((e) => e.index === 1)?.path).toBe("/events/1/tokens_output");
    const [n] =
      await db.sql`SELECT count(*)::int AS n FROM usage_events WHERE request_id = ${events[0]?.request_id as string}`;
    expect(n?.n).toBe(0);
  });

  it("enforces INGEST_MAX_BATCH", async () => {
    const small = await startService(db.url, { INGEST_MAX_BATCH: "3" });
    try {
      const res = await small.app.inject({
        method: "POST",
        url: "/webhooks/usage/batch",
        payload: { events: Array.from({ length: 4 }, () => usageEvent()) },
        headers: AUTH,
      });
      expect(res.statusCode).toBe(422);
      expect(res.body).toContain("INGEST_MAX_BATCH");
    } finally {
      await small.close();
    }
  });
});

describe("database down", () => {
  it("answers 503 with Retry-After, never 2xx or a stack trace; the event sent again after recovery is stored once", async () => {
    const u = new URL(db.url);
    const relay = await TcpProxy.start(u.hostname, Number(u.port || 5432));
    u.port = String(relay.port);
    const down = await startService(u.toString());
    try {
      const e = usageEvent();
      expect(
        (await down.app.inject({ method: "POST", url: "/webhooks/usage", payload: e, headers: AUTH }))
          .statusCode,
      ).toBe(202);
      await relay.cut();
      const res = await down.app.inject({
        method: "POST",
        url: "/webhooks/usage",
        payload: usageEvent(),
        headers: AUTH,
      });
      expect(res.statusCode).toBe(503);
      expect(res.headers["retry-after"]).toBe("5");
      expect(res.body).not.toContain("at ");
      const retried = usageEvent();
      expect(
        (await down.app.inject({ method: "POST", url: "/webhooks/usage", payload: retried, headers: AUTH }))
          .statusCode,
      ).toBe(503);
      expect((await down.app.inject({ method: "GET", url: "/health/ready" })).statusCode).toBe(503);
      const metrics = (await down.app.inject({ method: "GET", url: "/health/metrics" })).body;
      expect(metrics).toMatch(/lago_billing_database_errors_total\{where="ingest"\} [1-9]/);
      await relay.restore();
      const again = await down.app.inject({
        method: "POST",
        url: "/webhooks/usage",
        payload: retried,
        headers: AUTH,
      });
      expect(again.statusCode).toBe(202);
      expect(again.json()).toEqual({ accepted: 1, duplicates: 0, conflicts: 0 });
      const twice = await down.app.inject({
        method: "POST",
        url: "/webhooks/usage",
        payload: retried,
        headers: AUTH,
      });
      expect(twice.json()).toEqual({ accepted: 0, duplicates: 1, conflicts: 0 });
      const [n] =
        await db.sql`SELECT count(*)::int AS n FROM usage_events WHERE request_id = ${retried.request_id as string}`;
      expect(n?.n).toBe(1);
    } finally {
      await down.close();
      await relay.close();
    }
  });
});

describe("database behind a proxy that drops connections", () => {
  it("tells the sender to retry within the write timeout, and the retry after recovery is a duplicate", async () => {
    const u = new URL(db.url);
    const relay = await TcpProxy.start(u.hostname, Number(u.port || 5432));
    u.port = String(relay.port);
    const sql = openPool(u.toString(), { max: 2 });
    const ledger = new Ledger(sql, { mapEvents: () => [], writeTimeoutMs: 500 });
    try {
      await ledger.write([fromUsageEvent(usageEvent() as unknown as UsageEvent)]);
      await relay.drop();
      // The connection that was open fails at once (CONNECTION_CLOSED); later ones would wait forever.
      await expect(ledger.write([fromUsageEvent(usageEvent() as unknown as UsageEvent)])).rejects.toThrow();
      const record = fromUsageEvent(usageEvent() as unknown as UsageEvent);
      await expect(ledger.write([record])).rejects.toMatchObject({ code: "WRITE_TIMEOUT" });
      await relay.restore();
      // The timed-out write was queued, not lost: it commits after recovery; the retry is a duplicate.
      const retry = await ledger.write([record]);
      expect(["accepted", "duplicate"]).toContain(retry[0]);
      const [n] =
        await db.sql`SELECT count(*)::int AS n FROM usage_events WHERE request_id = ${record.requestId}`;
      expect(n?.n).toBe(1);
    } finally {
      await sql.end({ timeout: 1 });
      await relay.close();
    }
  });
});

describe("get_usage_by_customer and metrics", () => {
  it("sums each model's requests, tokens and cost exactly", async () => {
    const events = [
      usageEvent({
        customer_id: "sum-1",
        model: "gpt-4o",
        tokens_input: 100,
        tokens_output: 50,
        total_tokens: 150,
        cost_usd: 0.1,
      }),
      usageEvent({
        customer_id: "sum-1",
        model: "gpt-4o",
        tokens_input: 10,
        tokens_output: 5,
        total_tokens: 15,
        cost_usd: 0.2,
      }),
      usageEvent({
        customer_id: "sum-1",
        model: "command-r",
        tokens_input: 7,
        tokens_output: 3,
        total_tokens: 10,
        cost_usd: 0.0000001,
      }),
      usageEvent({
        customer_id: "sum-2",
        model: "gpt-4o",
        tokens_input: 1,
        tokens_output: 1,
        total_tokens: 2,
        cost_usd: 9,
      }),
    ];
    expect((await post("/webhooks/usage/batch", { events })).statusCode).toBe(202);
    const rows = await db.sql`SELECT * FROM get_usage_by_customer('sum-1', now() - interval '1 day', now())`;
    expect(rows.map((r) => ({ ...r }))).toEqual([
      {
        model: "command-r",
        requests: "1",
        input_tokens: "7",
        output_tokens: "3",
        cached_tokens: "0",
        reasoning_tokens: "0",
        total_tokens: "10",
        total_cost: "0.000000100000",
      },
      {
        model: "gpt-4o",
        requests: "2",
        input_tokens: "110",
        output_tokens: "55",
        cached_tokens: "0",
        reasoning_tokens: "0",
        total_tokens: "165",
        total_cost: "0.300000000000",
      },
    ]);
  });

  it("counts received events by outcome and source, and request latency, in Prometheus format", async () => {
    const e = usageEvent();
    await post("/webhooks/usage", e);
    await post("/webhooks/usage", e);
    await post("/webhooks/usage", usageEvent({ tokens_input: -1 }));
    const text = (await t.app.inject({ method: "GET", url: "/health/metrics" })).body;
    expect(text).toMatch(/lago_billing_usage_events_received_total\{outcome="accepted",source="api"\} [1-9]/);
    expect(text).toMatch(
      /lago_billing_usage_events_received_total\{outcome="duplicate",source="api"\} [1-9]/,
    );
    expect(text).toMatch(/lago_billing_usage_events_received_total\{outcome="rejected",source="api"\} [1-9]/);
    expect(text).toMatch(
      /lago_billing_http_request_duration_seconds_bucket\{le="0.05",route="\/webhooks\/usage",status_class="2xx"\}/,
    );
    expect(text).toContain("lago_billing_oldest_pending_age_seconds");
  });
});
