import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";

// Smoke runs keep the benchmark scripts working; they check correctness (nothing lost, nothing sent
// twice), never speed. Only run with VITEST_BENCH_SMOKE=1 (test.sh does).
const run = (script: string) =>
  spawnSync(process.execPath, [script, "--smoke"], { encoding: "utf8", timeout: 300_000, env: process.env });

describe("benchmark scripts (smoke)", () => {
  for (const script of ["bench/ingest.ts", "bench/delivery.ts", "bench/growth.ts", "bench/trip.ts"]) {
    it(`${script} runs and its correctness checks pass`, () => {
      const r = run(script);
      expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/target|exactly once/);
    }, 300_000);
  }

  it("bench/callback.ts runs every version of the callback and the service acknowledges every call", () => {
    const r = run("bench/callback.ts");
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/correctness: every call acknowledged by the service/);
    expect(r.stdout).toMatch(/default client \(aiohttp\)/);
  }, 300_000);

  it("bench/drivers.ts (postgres vs pg) runs and the rows it reports are written", () => {
    const r = run("bench/drivers.ts");
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/correctness: every run's reported rows are in its table/);
  }, 300_000);
});
