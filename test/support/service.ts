import type { FastifyInstance } from "fastify";
import { pino } from "pino";
import { buildApp } from "../../src/http/app.ts";
import { createService, type Service } from "../../src/service.ts";
import { loadSettings } from "../../src/settings.ts";

export const SECRET = "test-secret-0123456789";
export const AUTH = { authorization: `Bearer ${SECRET}` };

export interface TestService {
  service: Service;
  app: FastifyInstance;
  close(): Promise<void>;
}

/** A real service (pool, ledger, optional worker) on a test database, with its Fastify app. */
export async function startService(
  databaseUrl: string,
  env: Record<string, string> = {},
  opts: { worker?: boolean } = {},
): Promise<TestService> {
  const settings = loadSettings({
    DATABASE_URL: databaseUrl,
    WEBHOOK_SECRET: SECRET,
    LITELLM_CONFIG_PATH: "config.yaml",
    LAGO_RETRY_BASE_MS: "50",
    LAGO_RETRY_MAX_MS: "200",
    ...env,
  });
  const log = pino({ level: process.env.TEST_LOG_LEVEL ?? "silent" });
  const service = createService(settings, log, { worker: opts.worker ?? false });
  const app = await buildApp(service);
  await app.ready();
  await service.worker?.start();
  return {
    service,
    app,
    async close() {
      await app.close();
      await service.close();
    },
  };
}

/** POSTs usage events to /webhooks/usage/batch, 1000 per request; throws unless each answers 202. */
export async function ingestBatches(svc: TestService, events: Record<string, unknown>[]): Promise<void> {
  for (let i = 0; i < events.length; i += 1000) {
    const res = await svc.app.inject({
      method: "POST",
      url: "/webhooks/usage/batch",
      payload: { events: events.slice(i, i + 1000) },
      headers: AUTH,
    });
    if (res.statusCode !== 202) throw new Error(`ingest answered ${res.statusCode}: ${res.body}`);
  }
}

/** Outbox events by state, e.g. {delivered: 10, unbillable: 2}; states with no event are absent. */
export async function outboxStates(sql: Service["sql"]): Promise<Record<string, number>> {
  const rows = await sql<{ state: string; n: number }[]>`
    SELECT state, count(*)::int AS n FROM lago_events GROUP BY state`;
  return Object.fromEntries(rows.map((r) => [r.state, r.n]));
}

/** A usage event in the README's format, with overrides. */
export function usageEvent(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    event_type: "usage",
    timestamp: Math.floor(Date.now() / 1000) - 60,
    customer_id: "customer-123",
    model: "gpt-4o",
    provider: "openai",
    tokens_input: 100,
    tokens_output: 150,
    total_tokens: 250,
    cost_usd: 0.00375,
    request_id: `req-${Math.random().toString(36).slice(2)}`,
    api_key_hash: "key_a1b2c3",
    metadata: { user_id: "user-789", team_id: "team-456" },
    ...over,
  };
}

/** Polls until check() is truthy or the timeout passes (then throws with the label). */
export async function eventually<T>(
  check: () => Promise<T | undefined | false | null> | T,
  label: string,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${label}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Runs a delivery worker on the database until no outgoing event is pending, then stops it. */
export async function settleAllPending(databaseUrl: string, env: Record<string, string>): Promise<void> {
  const w = await startService(databaseUrl, env, { worker: true });
  try {
    await eventually(async () => {
      const [p] = await w.service.sql<{ n: number }[]>`
        SELECT count(*)::int AS n FROM lago_events WHERE state = 'pending'`;
      return p?.n === 0;
    }, "all events settled");
  } finally {
    await w.close();
  }
}
