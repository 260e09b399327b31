import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { resolveCustomer, type StandardLoggingPayload } from "../../src/ingest/litellm-payload.ts";
import type { AttributionSource } from "../../src/settings.ts";

interface Case {
  name: string;
  order: AttributionSource[];
  payload: StandardLoggingPayload;
  customer: string | null;
}

/** The long-id placeholders of the shared fixture (JSON has no repeat). */
function expand<T>(v: T): T {
  return JSON.parse(
    JSON.stringify(v).replace(/"LONG(\d+)"/g, (_m, n: string) => JSON.stringify("x".repeat(Number(n)))),
  ) as T;
}

const { cases } = expand(
  JSON.parse(readFileSync("test/fixtures/attribution-cases.json", "utf8")) as { cases: Case[] },
);

describe("customer attribution shared with the proxy's entitlement hook", () => {
  it.each(cases.map((c) => [c.name, c] as const))("%s", (_name, c) => {
    expect(resolveCustomer(c.payload, c.order)).toBe(c.customer);
  });
});
