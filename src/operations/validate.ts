import type { Service } from "../service.ts";

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
  /** What the operator should do when the check fails. */
  fix?: string;
}

/** Filter keys each billing mode's metric needs so that plans can price models and token types apart. */
const REQUIRED_FILTERS: Record<"tokens" | "cost", string[]> = { tokens: ["model", "type"], cost: ["model"] };

/**
 * GET /webhooks/validate: named checks of everything delivery depends on — configuration, the key
 * (a cheap authenticated GET), the billable metric and its filters, and in lookup mode that recent
 * customers resolve to an active subscription. Never echoes a secret.
 */
export async function validateLago(service: Service): Promise<{ ok: boolean; checks: Check[] }> {
  const { settings } = service;
  const checks: Check[] = [];
  const configured = service.lago !== null;
  checks.push({
    name: "configuration",
    ok: configured,
    detail: configured
      ? `Lago at ${settings.lago.url}, billing mode ${settings.lago.billingMode}, subscription mapping ${settings.lago.subscriptionMapping}`
      : "LAGO_API_URL (or LAGO_WEBHOOK_URL) and LAGO_API_KEY are not both set: usage is stored but not delivered",
    ...(configured ? {} : { fix: "set LAGO_API_URL and LAGO_API_KEY and restart" }),
  });
  if (!service.lago) return { ok: false, checks };
  const { client, resolver } = service.lago;
  const code = settings.lago.billingMode === "cost" ? settings.lago.costMetricCode : settings.lago.metricCode;

  let metric: { status: number; body: unknown } | null = null;
  const started = performance.now();
  try {
    metric = await client.request("GET", `/api/v1/billable_metrics/${encodeURIComponent(code)}`);
  } catch (err) {
    checks.push({
      name: "reachable",
      ok: false,
      detail: `cannot reach ${settings.lago.url}: ${(err as Error).message}`,
      fix: "check LAGO_API_URL and the network path to Lago",
    });
    return { ok: false, checks };
  }
  checks.push({
    name: "reachable",
    ok: true,
    detail: `answered in ${Math.round(performance.now() - started)} ms`,
  });
  const authOk = metric.status !== 401 && metric.status !== 403;
  checks.push({
    name: "api_key",
    ok: authOk,
    detail: authOk ? "the key is accepted" : `Lago refused the key (${metric.status})`,
    ...(authOk ? {} : { fix: "set LAGO_API_KEY to a key from Lago's Developers → API keys page" }),
  });
  if (!authOk) return { ok: false, checks };

  if (metric.status === 200) {
    const m = (
      metric.body as { billable_metric?: { filters?: { key?: string }[]; field_name?: string } } | null
    )?.billable_metric;
    const keys = new Set((m?.filters ?? []).map((f) => f.key));
    const missing = REQUIRED_FILTERS[settings.lago.billingMode].filter((k) => !keys.has(k));
    checks.push({
      name: "billable_metric",
      ok: missing.length === 0,
      detail:
        missing.length === 0
          ? `"${code}" exists with filters ${[...keys].join(", ")}`
          : `"${code}" exists but lacks the filter(s) ${missing.join(", ")}: every event would be billed at the default price`,
      ...(missing.length === 0 ? {} : { fix: "run `webhook-service lago setup` to add the filters" }),
    });
  } else {
    checks.push({
      name: "billable_metric",
      ok: false,
      detail:
        metric.status === 404
          ? `billable metric "${code}" does not exist: events for it would be accepted by Lago and never billed`
          : `GET /api/v1/billable_metrics/${code} answered ${metric.status}`,
      fix: "run `webhook-service lago setup`, or set LAGO_METRIC_CODE / LAGO_COST_METRIC_CODE to the metric's code",
    });
  }

  if (settings.lago.subscriptionMapping === "lookup") {
    const recent = await service.sql<{ customer_id: string }[]>`
      SELECT customer_id FROM usage_events WHERE billable
      GROUP BY customer_id ORDER BY max(received_at) DESC LIMIT 5`;
    const unresolved: string[] = [];
    for (const { customer_id } of recent) {
      const r = await resolver
        .lookup(customer_id)
        .catch((err: Error) => ({ ok: false as const, reason: err.message }));
      if (!r.ok) unresolved.push(r.reason);
    }
    checks.push({
      name: "subscription_lookup",
      ok: unresolved.length === 0,
      detail:
        recent.length === 0
          ? "no customers yet to check"
          : unresolved.length === 0
            ? `the ${recent.length} most recent customers each have one active subscription`
            : unresolved.join("; "),
      ...(unresolved.length === 0
        ? {}
        : {
            fix: "create the subscriptions (`webhook-service lago customer add`), then reprocess unbillable events",
          }),
    });
  }

  const sink = service.sink.snapshot();
  checks.push({
    name: "delivery",
    ok: sink.state === "ok",
    detail: sink.state === "ok" ? "the sink is sending" : `${sink.state}: ${sink.error ?? ""}`,
  });
  return { ok: checks.every((c) => c.ok), checks };
}
