import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";

const readme = readFileSync("README.md", "utf8");
const table = readme.slice(
  readme.indexOf("<!-- settings:start -->"),
  readme.indexOf("<!-- settings:end -->"),
);
const documented = new Set([...table.matchAll(/^\|\s*`([A-Z][A-Z0-9_]*)`/gm)].map((m) => m[1]));

describe("README", () => {
  it("documents exactly the environment variables the service reads", () => {
    const source = readFileSync("src/settings.ts", "utf8");
    const read = new Set([...source.matchAll(/\(env, "([A-Z][A-Z0-9_]*)"/g)].map((m) => m[1]));
    expect(read.size).toBeGreaterThan(30);
    expect([...read].filter((n) => !documented.has(n))).toEqual([]);
    expect([...documented].filter((n) => !read.has(n))).toEqual([]);
  });

  it("names every endpoint the service serves", () => {
    for (const route of [
      "POST /webhooks/usage",
      "POST /webhooks/usage/batch",
      "POST /webhooks/litellm",
      "POST /webhooks/reprocess",
      "GET /webhooks/stats",
      "GET /webhooks/validate",
      "GET /health",
      "/health/ready",
      "/health/live",
      "/health/metrics",
    ]) {
      expect(readme).toContain(route);
    }
  });

  it("documents every setting of the native stack (scripts/stack.sh's env overrides)", () => {
    const stack = readFileSync("scripts/stack.sh", "utf8");
    const header = stack.slice(stack.indexOf("# Env overrides:"), stack.indexOf("set -euo pipefail"));
    const names = new Set(
      [...header.matchAll(/\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b/g)].map((m) => m[1] as string),
    );
    for (const n of ["WEBHOOK_PORT", "LITELLM_PORT", "DEMO_UPSTREAM_PORT", "DEMO_LAGO_PORT"]) {
      expect(names.has(n), n).toBe(true);
    }
    const quickStart = readme.slice(readme.indexOf("## Quick start"), readme.indexOf("## Features"));
    for (const n of [
      "WEBHOOK_PORT",
      "LITELLM_PORT",
      "DEMO_UPSTREAM_PORT",
      "DEMO_LAGO_PORT",
      "STACK_DIR",
      "LITELLM_CONFIG",
    ]) {
      expect(quickStart, `${n} in the quick start's native stack settings`).toContain(`\`${n}\``);
    }
    expect([...names].filter((n) => !readme.includes(n))).toEqual([]);
  });

  it("says what /webhooks/stats counts as not billable", () => {
    const row = readme.split("\n").find((l) => l.startsWith("| `GET /webhooks/stats`")) ?? "";
    expect(row).toMatch(/not_billable.*failed calls/);
  });
});
