/**
 * Keeps bench/litellm.ts working: runs it with --smoke (tiny sizes, real LiteLLM proxies, webhook
 * service, Lago doubles) and expects exit 0, which it gives only when our path (b) neither lost nor
 * double-billed an event and the ledger matches the calls made. Never asserts on speed.
 * Runs only with VITEST_BENCH_SMOKE=1 (see vitest.config.ts).
 */
import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";

const LIMIT_MS = 180_000;

describe("bench/litellm.ts --smoke", () => {
  it(
    "measures overhead, outage and lag with no lost or double-billed event in (b)",
    async () => {
      const child = spawn(process.execPath, ["bench/litellm.ts", "--smoke"], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
      });
      child.stderr.on("data", (d: Buffer) => {
        out += d.toString();
      });
      // SIGTERM lets the benchmark stop its proxies, services and doubles and drop its database.
      const timer = setTimeout(() => child.kill("SIGTERM"), LIMIT_MS);
      const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
      clearTimeout(timer);
      expect(code, out.slice(-6000)).toBe(0);
      expect(out).toContain("Correctness: OK");
      expect(out).toMatch(/4 outage: \(b\) events lost\s+0/);
    },
    LIMIT_MS + 60_000,
  );
});
