import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { litellmPayload } from "../support/payloads.ts";
import { AUTH, startService, type TestService } from "../support/service.ts";

let db: TestDatabase;
let t: TestService;

beforeAll(async () => {
  db = await createTestDatabase();
  t = await startService(db.url, { LITELLM_CONFIG_PATH: "config.yaml" });
});
afterAll(async () => {
  await t?.close();
  await db?.drop();
});

const send = (payload: string | object, contentType = "application/json") =>
  t.app.inject({
    method: "POST",
    url: "/webhooks/litellm",
    payload: typeof payload === "string" ? payload : JSON.stringify(payload),
    headers: { ...AUTH, "content-type": contentType },
  });

const row = async (requestId: string) =>
  (await db.sql`SELECT * FROM usage_events WHERE request_id = ${requestId}`)[0];

describe("POST /webhooks/litellm", () => {
  it("takes a single object, a JSON list and NDJSON", async () => {
    const a = litellmPayload();
    const b = litellmPayload();
    const c = litellmPayload();
    const d = litellmPayload();
    expect((await send(a)).json()).toMatchObject({ accepted: 1 });
    expect((await send([b, c])).json()).toMatchObject({ accepted: 2 });
    expect(
      (await send(`${JSON.stringify(d)}\n${JSON.stringify(a)}\n`, "application/x-ndjson")).json(),
    ).toMatchObject({
      accepted: 1,
      duplicates: 1,
    });
  });

  it("maps ids, time, tokens, cost and who from the payload, never the prompt", async () => {
    const p = litellmPayload(
      { prompt_tokens: 120, completion_tokens: 30, total_tokens: 150, response_cost: 0.0007 },
      {
        usage_object: {
          prompt_tokens: 120,
          completion_tokens: 30,
          prompt_tokens_details: { cached_tokens: 100 },
          completion_tokens_details: { reasoning_tokens: 5 },
        },
      },
    );
    expect((await send([p])).statusCode).toBe(202);
    const r = await row(p.id as string);
    expect(r).toMatchObject({
      customer_id: "customer-123",
      user_id: "user-789",
      team_id: "team-456",
      model: "gpt-4o",
      provider: "openai",
      tokens_input: "120",
      tokens_output: "30",
      tokens_cached: "100",
      tokens_reasoning: "5",
      cost_usd: "0.000700000000",
      cost_source: "reported",
      source: "litellm",
      api_key_hash: "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
    });
    expect(Math.abs(new Date(r?.event_time).getTime() / 1000 - (p.startTime as number))).toBeLessThan(0.001);
    expect(JSON.stringify(r)).not.toContain("secret");
  });

  it("falls back to litellm_call_id and follows the attribution order", async () => {
    const p = litellmPayload({ id: null, end_user: null });
    await send([p]);
    const r = await row(p.litellm_call_id as string);
    expect(r?.customer_id).toBe("user-789");
    const teamOnly = litellmPayload({ end_user: "" }, { user_api_key_user_id: null });
    await send([teamOnly]);
    expect((await row(teamOnly.id as string))?.customer_id).toBe("team-456");
  });

  it("never bills LiteLLM's placeholder user of the master key", async () => {
    const p = litellmPayload(
      { end_user: null },
      {
        user_api_key_user_id: "default_user_id",
        user_api_key_team_id: null,
        user_api_key_hash: "litellm_proxy_master_key",
      },
    );
    const res = await send([p]);
    expect(res.json()).toMatchObject({ accepted: 0, rejected: 1 });
    expect(await row(p.id as string)).toBeUndefined();
  });

  it("keeps payloads without a customer as rejections with the reason", async () => {
    const p = litellmPayload({ end_user: null }, { user_api_key_user_id: null, user_api_key_team_id: null });
    const res = await send([p, litellmPayload()]);
    expect(res.statusCode).toBe(202);
    const body = res.json() as {
      accepted: number;
      rejected: number;
      errors: { index: number; message: string }[];
    };
    expect(body.accepted).toBe(1);
    expect(body.rejected).toBe(1);
    expect(body.errors[0]?.index).toBe(0);
    expect(body.errors[0]?.message).toMatch(/no customer/);
    const [rej] =
      await db.sql`SELECT reason, payload FROM ingest_rejections WHERE request_id = ${p.id as string}`;
    expect(rej?.reason).toMatch(/no customer/);
    expect(JSON.stringify(rej?.payload)).not.toContain("secret");
  });

  it("acknowledges failed calls without tokens as not billable, with no Lago events", async () => {
    const p = litellmPayload({
      status: "failure",
      prompt_tokens: 0,
      completion_tokens: 0,
      total_tokens: 0,
      response_cost: 0,
    });
    const res = await send([p]);
    expect(res.json()).toMatchObject({ accepted: 1, not_billable: 1 });
    const r = await row(p.id as string);
    expect(r).toMatchObject({
      billable: false,
      status: "failure",
      not_billable_reason: "failed call without tokens",
    });
    const [n] = await db.sql`SELECT count(*)::int AS n FROM lago_events WHERE usage_event_id = ${r?.id}`;
    expect(n?.n).toBe(0);
  });

  it("prices a call LiteLLM reported at $0 from config.yaml and says so", async () => {
    // config.yaml: gpt-4o costs 0.000005 per input and 0.000015 per output token.
    const p = litellmPayload({
      response_cost: 0,
      prompt_tokens: 1000,
      completion_tokens: 200,
      total_tokens: 1200,
    });
    await send([p]);
    const r = await row(p.id as string);
    expect(r).toMatchObject({ cost_source: "priced", cost_usd: "0.008000000000" });
  });

  it("does not bill cache hits unless BILL_CACHE_HITS", async () => {
    const p = litellmPayload({ cache_hit: true, id: `chatcmpl-x_cache_hit${Date.now()}` });
    await send([p]);
    expect((await row(p.id as string))?.billable).toBe(false);
  });

  it("answers 400 to a body that is neither JSON nor NDJSON", async () => {
    expect((await send("{oops", "application/json")).statusCode).toBe(400);
  });
});
