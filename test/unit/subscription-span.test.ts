import { describe, expect, it } from "vitest";
import {
  placeEvent,
  type SubscriptionSpan,
  type SubscriptionView,
  spanFromLago,
} from "../../src/lago/subscription-span.ts";

const T = (iso: string) => Date.parse(iso);
const S = (iso: string) => Date.parse(iso) / 1000;

const span = (over: Partial<SubscriptionSpan>): SubscriptionSpan => ({
  externalId: "sub-1",
  status: "active",
  planCode: "p",
  startedAt: T("2026-11-01T00:00:00Z"),
  subscriptionAt: T("2026-11-01T00:00:00Z"),
  terminatedAt: null,
  ...over,
});

const view = (over: Partial<SubscriptionView>): SubscriptionView => ({
  key: { kind: "subscription", id: "sub-1" },
  active: [],
  pending: [],
  terminated: [],
  complete: true,
  ...over,
});

describe("placing a call in a subscription span (app/models/event.rb#subscription)", () => {
  it("sends a call inside the active span, from its first millisecond", () => {
    const v = view({ active: [span({})], complete: false });
    expect(placeEvent(v, S("2026-11-01T00:00:00Z"))).toEqual({ kind: "send", subscriptionId: "sub-1" });
  });

  it("asks for more before deciding about a call outside the active span", () => {
    expect(placeEvent(view({ active: [span({})], complete: false }), S("2026-10-31T23:59:59Z"))).toEqual({
      kind: "incomplete",
    });
  });

  it("parks a call before the active subscription's start, with both dates and the fix", () => {
    const p = placeEvent(view({ active: [span({})] }), S("2026-10-31T12:00:00Z"));
    expect(p.kind).toBe("park");
    expect(p.kind === "park" && p.reason).toMatch(
      /call at 2026-10-31T12:00:00.000Z precedes subscription "sub-1" start at 2026-11-01T00:00:00.000Z.*--subscription-at 2026-10-31T12:00:00.000Z.*reprocess --state unbillable/,
    );
  });

  it("sends a call before the active one's start to an earlier, terminated subscription that covers it", () => {
    const old = span({
      externalId: "sub-old",
      status: "terminated",
      startedAt: T("2026-10-01T00:00:00Z"),
      terminatedAt: T("2026-10-31T23:59:59Z"),
    });
    expect(placeEvent(view({ active: [span({})], terminated: [old] }), S("2026-10-15T00:00:00Z"))).toEqual({
      kind: "send",
      subscriptionId: "sub-old",
    });
  });

  it("parks a call after the termination, and a call before a pending start; holds one after it", () => {
    const term = span({ status: "terminated", terminatedAt: T("2026-11-20T00:00:00Z") });
    expect(placeEvent(view({ terminated: [term] }), S("2026-11-19T00:00:00Z"))).toMatchObject({
      kind: "send",
    });
    const after = placeEvent(view({ terminated: [term] }), S("2026-11-21T00:00:00Z"));
    expect(after.kind === "park" && after.reason).toMatch(
      /call at 2026-11-21T00:00:00.000Z is after subscription "sub-1" was terminated at 2026-11-20T00:00:00.000Z/,
    );
    const pending = span({ status: "pending", startedAt: null, subscriptionAt: T("2026-12-10T00:00:00Z") });
    const before = placeEvent(view({ pending: [pending] }), S("2026-12-01T00:00:00Z"));
    expect(before.kind === "park" && before.reason).toMatch(
      /precedes subscription "sub-1", which is pending and starts at 2026-12-10T00:00:00.000Z.*PUT \/api\/v1\/subscriptions\/sub-1/,
    );
    expect(placeEvent(view({ pending: [pending] }), S("2026-12-10T00:00:01Z")).kind).toBe("hold");
  });

  it("says when there is no subscription at all, or several active ones for a customer", () => {
    const none = placeEvent(view({}), S("2026-12-01T00:00:00Z"));
    expect(none.kind === "park" && none.reason).toMatch(
      /Lago has no subscription "sub-1" \(none active, pending or terminated\)/,
    );
    const several = placeEvent(
      view({ key: { kind: "customer", id: "acme" }, active: [span({}), span({ externalId: "sub-2" })] }),
      S("2026-12-01T00:00:00Z"),
    );
    expect(several.kind === "park" && several.reason).toMatch(/customer "acme" has 2 active subscriptions/);
  });

  it("reads Lago's subscription JSON", () => {
    expect(
      spanFromLago({
        external_id: "s",
        status: "terminated",
        plan_code: "p",
        started_at: "2026-01-01T00:00:00Z",
        subscription_at: "2026-01-01T00:00:00Z",
        terminated_at: "2026-02-01T00:00:00Z",
      }),
    ).toEqual({
      externalId: "s",
      status: "terminated",
      planCode: "p",
      startedAt: T("2026-01-01T00:00:00Z"),
      subscriptionAt: T("2026-01-01T00:00:00Z"),
      terminatedAt: T("2026-02-01T00:00:00Z"),
    });
    expect(spanFromLago({ status: "active" })).toBeNull();
  });
});
