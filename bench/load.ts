/** The HTTP load generator shared by the ingest and growth benchmarks. */
import type { Pool } from "undici";
import { machineBusySeconds, SECRET } from "./harness.ts";
import { postgresCpuSeconds, treeCpuSeconds } from "./lib.ts";

let seq = 0;
const runId = Date.now().toString(36);
export const now = Math.floor(Date.now() / 1000) - 60;
export function event() {
  seq++;
  return {
    event_type: "usage",
    timestamp: now,
    customer_id: `customer-${seq % 100}`,
    model: "gpt-4o",
    provider: "openai",
    tokens_input: 100 + (seq % 50),
    tokens_output: 150,
    total_tokens: 250 + (seq % 50),
    cost_usd: 0.00375,
    request_id: `bench-${runId}-${seq}`,
    api_key_hash: "key_a1b2c3",
    metadata: { user_id: "user-789", team_id: "team-456" },
  };
}

export interface CaseResult {
  name: string;
  events: number;
  seconds: number;
  latencies: number[];
  errors: number;
  cpu: { service: number; postgres: number; loadgen: number; machine: number };
}

export async function httpCase(
  name: string,
  pool: Pool,
  servicePid: number,
  database: string,
  clients: number,
  batch: number | null,
  seconds: number,
): Promise<CaseResult> {
  const latencies: number[] = [];
  let events = 0;
  let errors = 0;
  const cpu0 = {
    s: treeCpuSeconds(servicePid),
    p: postgresCpuSeconds(database),
    l: process.cpuUsage(),
    m: machineBusySeconds(),
  };
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const worker = async () => {
    while (performance.now() < deadline) {
      const body =
        batch === null
          ? JSON.stringify(event())
          : JSON.stringify({ events: Array.from({ length: batch }, event) });
      const t0 = performance.now();
      const res = await pool.request({
        method: "POST",
        path: batch === null ? "/webhooks/usage" : "/webhooks/usage/batch",
        headers: { authorization: `Bearer ${SECRET}`, "content-type": "application/json" },
        body,
      });
      await res.body.text();
      latencies.push(performance.now() - t0);
      if (res.statusCode === 202) events += batch ?? 1;
      else errors++;
    }
  };
  await Promise.all(Array.from({ length: clients }, worker));
  const elapsed = (performance.now() - started) / 1000;
  const l = process.cpuUsage(cpu0.l);
  return {
    name,
    events,
    seconds: elapsed,
    latencies: latencies.sort((a, b) => a - b),
    errors,
    cpu: {
      service: treeCpuSeconds(servicePid) - cpu0.s,
      postgres: postgresCpuSeconds(database) - cpu0.p,
      loadgen: (l.user + l.system) / 1e6,
      machine: machineBusySeconds() - cpu0.m,
    },
  };
}
