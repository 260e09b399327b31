import { describe, expect, it } from "vitest";
import { backoffMs, giveUpReason } from "../../src/delivery/retry-policy.ts";
import { Sink } from "../../src/delivery/sink.ts";
import { classify, rateLimitWait } from "../../src/lago/client.ts";

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
    sink.rateLimited({ seconds: 2, source: "x-ratelimit-reset" }, sink.epoch);
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
    sink.rateLimited({ seconds: 5, source: "x-ratelimit-reset" }, before);
    expect(sink.snapshot().state).toBe("auth_failing");
    now = 31_000;
    expect(sink.succeeded(sink.epoch)).toBe(true);
  });

  it("clamps any asked-for pause to the configured maximum and says so", () => {
    const sink = new Sink({ now: () => 0, maxRateLimitPauseMs: 60_000 });
    // An epoch misread as seconds would be ~56 years.
    expect(sink.rateLimited({ seconds: 1_767_225_600, source: "x-ratelimit-reset" }, sink.epoch)).toBe(
      60_000,
    );
    expect(sink.waitMs()).toBe(60_000);
    expect(sink.snapshot().error).toMatch(/capped at 60 s \(LAGO_RATE_LIMIT_MAX_PAUSE_SECONDS\)/);
  });

  it("backs off 1, 2, 4... s on bare 429s, up to the maximum, and starts over after a success", () => {
    const sink = new Sink({ now: () => 0, maxRateLimitPauseMs: 5000 });
    const pauses = [1, 2, 3, 4, 5].map(() => sink.rateLimited(null, sink.epoch));
    expect(pauses).toEqual([1000, 2000, 4000, 5000, 5000]);
    expect(sink.snapshot().error).toMatch(/without Retry-After or X-RateLimit-Reset/);
    sink.succeeded(sink.epoch);
    expect(sink.rateLimited(null, sink.epoch)).toBe(1000);
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
      wait: { seconds: 3, source: "x-ratelimit-reset" },
      limit: 500,
    });
    // Self-hosted Lago's only 429 carries no rate-limit headers (app/controllers/concerns/api_errors.rb).
    expect(classify(res(429, { code: "too_many_provider_requests" }), 0)).toMatchObject({
      kind: "rate_limited",
      wait: null,
      limit: null,
    });
    expect(classify(res(401)).kind).toBe("auth");
    expect(classify(res(403)).kind).toBe("auth");
    expect(classify(res(502)).kind).toBe("retryable");
    expect(classify(res(408)).kind).toBe("retryable");
    expect(classify(res(400)).kind).toBe("invalid");
    expect(classify(res(422, { error: "x" })).kind).toBe("invalid");
  });
});

describe("reading a 429's wait (Lago Cloud, or a proxy in front of self-hosted Lago)", () => {
  const now = Date.parse("2026-12-02T12:00:00Z");
  it("takes X-RateLimit-Reset as seconds to wait (Lago Cloud)", () => {
    expect(rateLimitWait({ "x-ratelimit-reset": "7" }, now)).toEqual({
      seconds: 7,
      source: "x-ratelimit-reset",
    });
  });
  it("takes an X-RateLimit-Reset above 1e9 as an epoch, in seconds or milliseconds", () => {
    const at = now / 1000 + 12;
    expect(rateLimitWait({ "x-ratelimit-reset": String(at) }, now)).toEqual({
      seconds: 12,
      source: "x-ratelimit-reset-epoch",
    });
    expect(rateLimitWait({ "x-ratelimit-reset": String(at * 1000) }, now)?.seconds).toBeCloseTo(12);
    // A reset already past means: go now.
    expect(rateLimitWait({ "x-ratelimit-reset": String(now / 1000 - 5) }, now)?.seconds).toBe(0);
  });
  it("prefers Retry-After, in seconds or as an HTTP date", () => {
    expect(rateLimitWait({ "retry-after": "4", "x-ratelimit-reset": "30" }, now)).toEqual({
      seconds: 4,
      source: "retry-after",
    });
    expect(rateLimitWait({ "retry-after": new Date(now + 9000).toUTCString() }, now)).toEqual({
      seconds: 9,
      source: "retry-after",
    });
  });
  it("says nothing for a bare 429 or headers it cannot read", () => {
    expect(rateLimitWait({}, now)).toBeNull();
    expect(rateLimitWait({ "x-ratelimit-reset": "soon", "retry-after": "later" }, now)).toBeNull();
  });
});
