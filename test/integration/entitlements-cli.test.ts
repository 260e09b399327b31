/**
 * The README's entitlement commands, run as written (the `webhook-service` lines through
 * `node dist/cli.js`, the curl through fetch) against a running service whose engine publishes to
 * Redis: a manual block reaches the proxies' keys with its reason, unblock lifts it, and unblock
 * refuses a customer blocked by Lago's state.
 */

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { REDIS_URL } from "../support/env.ts";
import { LagoDouble } from "../support/lago-double.ts";
import { runCli } from "../support/process.ts";
import {
  eventually,
  ingestBatches,
  SECRET,
  startService,
  type TestService,
  usageEvent,
} from "../support/service.ts";

let lago: LagoDouble;
let db: TestDatabase;
let t: TestService;
let redis: Redis;
let base: string;
const prefix = `test-ent-cli:${randomUUID()}:`;

const env = () => ({
  DATABASE_URL: db.url,
  WEBHOOK_SECRET: SECRET,
  LAGO_API_URL: lago.url,
  LAGO_API_KEY: "lago-key",
  REDIS_URL,
  ENFORCEMENT: "enforce",
  ENTITLEMENT_REDIS_PREFIX: prefix,
  LITELLM_CONFIG_PATH: "config.yaml",
});

beforeAll(async () => {
  lago = await LagoDouble.start({ apiKey: "lago-key" });
  lago.addSubscription("customer-123", "customer-123");
  db = await createTestDatabase();
  redis = new Redis(REDIS_URL);
  t = await startService(db.url, env());
  base = await t.app.listen({ host: "127.0.0.1", port: 0 });
  await t.service.entitlements.engine.start();
  await ingestBatches(t, [
    usageEvent({ customer_id: "customer-123" }),
    usageEvent({ customer_id: "no-sub" }),
  ]);
  await eventually(
    async () => (await db.sql`SELECT 1 FROM entitlements WHERE refreshed_at IS NOT NULL`).length === 2,
    "both customers read from Lago",
  );
});
afterAll(async () => {
  await t?.close();
  await db?.drop();
  await lago?.close();
  for (const k of await redis.keys(`${prefix}*`)) await redis.del(k);
  redis.disconnect();
});

/** The README block after its `executed by` marker for this file. */
function readmeCommands(): string[] {
  const lines = readFileSync("README.md", "utf8").split("\n");
  const at = lines.findIndex((l) => l.includes("executed by test/integration/entitlements-cli.test.ts"));
  const out: string[] = [];
  for (let i = at + 2; i < lines.length && !(lines[i] ?? "").startsWith("```"); i++) out.push(lines[i] ?? "");
  return out;
}

/** Shell words: plain and double-quoted (all the README uses). */
const words = (line: string) => [...line.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2] ?? "");

async function cli(args: string[]): Promise<{ code: number | null; out: string }> {
  const p = runCli(args, env());
  const code = await p.exited;
  return { code, out: p.output() };
}

const entry = async (customer: string) => {
  const text = await redis.hget(`${prefix}entries`, customer);
  return text === null ? null : (JSON.parse(text) as { s: string; r: string; m: string });
};

describe("README: entitlement commands", () => {
  it("runs every command of the block, in order, with the documented effects", async () => {
    const commands = readmeCommands();
    expect(commands).toHaveLength(4);
    const [curl, show, block, unblock] = commands as [string, string, string, string];
    const url = /"(http:\/\/localhost:3001[^"]+)"/.exec(curl)?.[1] ?? "";
    const res = await fetch(url.replace("http://localhost:3001", base), {
      headers: { authorization: `Bearer ${SECRET}` },
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({
      enforcement: "enforce",
      customers: [{ customer_id: "no-sub" }],
    });

    const shown = await cli(words(show).slice(1));
    expect(shown.code, shown.out).toBe(0);
    expect(JSON.parse(shown.out)).toMatchObject({ customer_id: "customer-123", state: "allowed" });

    const blocked = await cli(words(block).slice(1));
    expect(blocked.code, blocked.out).toBe(0);
    await eventually(async () => (await entry("customer-123"))?.r === "manual", "the block published");
    expect((await entry("customer-123"))?.m).toContain("payment disputed");

    const unblocked = await cli(words(unblock).slice(1));
    expect(unblocked.code, unblocked.out).toBe(0);
    await eventually(async () => (await entry("customer-123")) === null, "the block lifted");
    const history = (await db.sql`
      SELECT source, actor, message FROM entitlement_history WHERE customer_id = 'customer-123' AND source = 'manual'
      ORDER BY id`) as { source: string; actor: string; message: string }[];
    expect(history.map((h) => h.message)).toEqual(["payment disputed", "dispute resolved"]);
  });

  it("refuses to unblock a customer blocked by Lago's state unless --force, and lists blocked customers", async () => {
    const refused = await cli(["entitlements", "unblock", "no-sub", "--reason", "trying"]);
    expect(refused.code).toBe(5);
    expect(refused.out).toMatch(/subscription_missing.*--force/s);
    const forced = await cli(["entitlements", "unblock", "no-sub", "--reason", "trial extension", "--force"]);
    expect(forced.code, forced.out).toBe(0);
    await eventually(async () => (await entry("no-sub")) === null, "allowed by override");
    const list = await cli(["entitlements", "list"]);
    expect(
      JSON.parse(list.out)
        .customers.map((c: { customer_id: string }) => c.customer_id)
        .sort(),
    ).toEqual(["customer-123", "no-sub"]);
    const cleared = await cli(["entitlements", "clear", "no-sub", "--reason", "trial over"]);
    expect(cleared.code, cleared.out).toBe(0);
    await eventually(async () => (await entry("no-sub"))?.r === "subscription_missing", "blocked again");
    const missing = await cli(["entitlements", "show", "nobody"]);
    expect(missing.code).toBe(1);
    expect(missing.out).toMatch(/not tracked/);
  });
});
