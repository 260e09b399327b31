import { describe, expect, it } from "vitest";
import { backoffMs, giveUpReason } from "../../src/delivery/retry-policy.ts";
import { Sink } from "../../src/delivery/sink.ts";
import { classify } from "../../src/lago/client.ts";

const policy = { baseMs: 1000, maxMs: 60_000, maxAttempts: 5, maxAgeHours: 72 };

describe("retry policy", () => {
  it("backs off exponentially with full jitter, capped", () => {
    expect(backoffMs(policy, 1, () => 0.999)).toBe(999);
    expect(backoffMs(policy, 3, () => 0.5)).toBe(2000);
    expect(backoffMs(policy, 30, () => 0.999)).toBe(59_940);
    expect(backoffMs(policy, 4, () => 0)).toBe(0);
  });

  it("gives up after the attempts or the age, with a reason", () => {
    const now = Date.now();
    expect(giveUpReason(policy, 4, now, now)).toBeNull();
    expect(giveUpReason(policy, 5, now, now)).toMatch(/5 attempts/);
    expect(giveUpReason(policy, 1, now - 73 * 3_600_000, now)).toMatch(/72 h/);
  });
});

describe("sink", () => {
  it("pauses for 429 until reset, then only a success clears it", () => {
    let now = 0;
    const sink = new Sink({ now: () => now });
    sink.rateLimited(2, sink.epoch);
    expect(sink.snapshot().state).toBe("rate_limited");
    expect(sink.waitMs()).toBe(2000);
    now = 2500;
    expect(sink.waitMs()).toBe(0);
    expect(sink.isOk).toBe(false);
    expect(sink.succeeded(sink.epoch)).toBe(true);
    expect(sink.isOk).toBe(true);
  });

  it("ignores late answers to requests sent before the current pause", () => {
    let now = 0;
    const sink = new Sink({ now: () => now });
    const before = sink.epoch;
    sink.authFailed("401", sink.epoch);
    expect(sink.succeeded(before)).toBe(false);
    expect(sink.snapshot().state).toBe("auth_failing");
    sink.rateLimited(5, before);
    expect(sink.snapshot().state).toBe("auth_failing");
    now = 31_000;
    expect(sink.succeeded(sink.epoch)).toBe(true);
  });

  it("backs off only after repeated failures", () => {
    const sink = new Sink({ now: () => 0 });
    sink.failed("503", sink.epoch);
    sink.failed("503", sink.epoch);
    expect(sink.isOk).toBe(true);
    sink.failed("503", sink.epoch);
    expect(sink.snapshot()).toMatchObject({ state: "backing_off", error: "503" });
  });
});

describe("classifying Lago's answers", () => {
  const res = (status: number, body: unknown = {}, headers: Record<string, string> = {}) => ({
    status,
    body,
    headers,
  });
  it("follows Lago's contract", () => {
    expect(classify(res(200)).kind).toBe("ok");
    expect(
      classify(res(422, { error_details: { "0": { transaction_id: ["value_already_exist"] } } })),
    ).toMatchObject({
      kind: "rejected",
      details: { "0": { transaction_id: ["value_already_exist"] } },
    });
    expect(classify(res(429, {}, { "x-ratelimit-reset": "3", "x-ratelimit-limit": "500" }))).toMatchObject({
      kind: "rate_limited",
      resetSeconds: 3,
      limit: 500,
    });
    expect(classify(res(401)).kind).toBe("auth");
    expect(classify(res(403)).kind).toBe("auth");
    expect(classify(res(502)).kind).toBe("retryable");
    expect(classify(res(408)).kind).toBe("retryable");
    expect(classify(res(400)).kind).toBe("invalid");
    expect(classify(res(422, { error: "x" })).kind).toBe("invalid");
  });
});
