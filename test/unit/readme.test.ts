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
});
