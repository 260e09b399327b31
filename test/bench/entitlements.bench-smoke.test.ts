/**
 * Keeps bench/entitlements.ts working: runs it with --smoke (the real LiteLLM proxy with the billing
 * callback and the entitlement hook, the webhook service, the Lago double) and expects exit 0, which
 * it gives only when every customer whose credit ran out was refused with 402 and a customer without
 * a wallet never was. Never asserts on speed. Runs only with VITEST_BENCH_SMOKE=1.
 */
import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";

const LIMIT_MS = 240_000;

describe("bench/entitlements.ts --smoke", () => {
  it(
    "refuses every customer whose credit ran out, and no one else",
    async () => {
      const child = spawn(process.execPath, ["bench/entitlements.ts", "--smoke"], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
      });
      child.stderr.on("data", (d: Buffer) => {
        out += d.toString();
      });
      const timer = setTimeout(() => child.kill("SIGTERM"), LIMIT_MS);
      const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
      clearTimeout(timer);
      expect(code, out.slice(-6000)).toBe(0);
      expect(out).toContain("Correctness: OK");
    },
    LIMIT_MS + 60_000,
  );
});
