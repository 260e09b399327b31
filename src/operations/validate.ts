import { query } from "../db/queries.ts";
import type { LagoClient } from "../lago/client.ts";
import { auditLedger } from "../lago/subscription-audit.ts";
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
 * GET /webhooks/validate and `webhook-service validate`: named checks of everything delivery depends
 * on — configuration, the key (a cheap authenticated GET), the billable metric and its filters, the
 * batch length Lago accepts, rate limiting, and that every customer with usage to bill maps to a
 * subscription whose span covers it (not missing, pending, terminated, or starting after the usage).
 * Never echoes a secret.
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
  const { client } = service.lago;
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

  checks.push(await batchSizeCheck(service));
  checks.push(await rateLimitCheck(service));
  checks.push(await subscriptionsCheck(service));

  const sink = service.sink.snapshot();
  checks.push({
    name: "delivery",
    ok: sink.state === "ok",
    detail: sink.state === "ok" ? "the sink is sending" : `${sink.state}: ${sink.error ?? ""}`,
  });
  return { ok: checks.every((c) => c.ok), checks };
}

/**
 * Lago refuses batches longer than its LAGO_EVENTS_BATCH_MAX_LENGTH (100 unless a self-hosted Lago
 * lowers it) before looking at any event (app/services/events/create_batch_service.rb). So a batch
 * of deliberately invalid events (blank transaction_id and code) tells the limit and can never be
 * stored: Lago answers too_many_events, or index-keyed validation errors and keeps nothing.
 */
export async function probeBatchLength(
  client: LagoClient,
  size: number,
): Promise<{ accepted: number | null; requests: number; detail: string }> {
  let requests = 0;
  /** true: Lago looked at the events (so it takes n); false: too_many_events; a string: another answer. */
  const takes = async (n: number): Promise<boolean | string> => {
    requests++;
    const events = Array.from({ length: n }, () => ({
      transaction_id: "",
      code: "",
      timestamp: 0,
      properties: {},
    }));
    const res = await client.request("POST", "/api/v1/events/batch", { events });
    const details = (res.body as { error_details?: Record<string, unknown> } | null)?.error_details;
    if (res.status === 422 && Array.isArray(details?.events) && details.events.includes("too_many_events"))
      return false;
    if (res.status === 422) return true;
    return `the probe batch of ${n} answered ${res.status}`;
  };
  // Halve like the worker does, then search between the last refused and the first accepted length.
  let refused = 0;
  for (let n = size; n >= 1; n = Math.floor(n / 2)) {
    const r = await takes(n);
    if (typeof r === "string") return { accepted: null, requests, detail: r };
    if (!r) {
      refused = n;
      continue;
    }
    let lo = n;
    let hi = refused;
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      const m = await takes(mid);
      if (typeof m === "string") return { accepted: null, requests, detail: m };
      if (m) lo = mid;
      else hi = mid;
    }
    return { accepted: lo, requests, detail: "" };
  }
  return { accepted: null, requests, detail: "Lago answered too_many_events even to one event" };
}

async function batchSizeCheck(service: Service): Promise<Check> {
  const configured = service.settings.lago.batchSize;
  const worker = service.worker?.batchSize;
  const learned =
    worker && worker.effective < configured
      ? ` The worker of this process already sends ${worker.effective}: ${worker.reason}.`
      : "";
  try {
    const probe = await probeBatchLength(service.lago?.client as LagoClient, configured);
    if (probe.accepted === configured) {
      return {
        name: "batch_size",
        ok: true,
        detail: `Lago accepts batches of ${configured} (LAGO_BATCH_SIZE); probed with invalid events Lago never stores.${learned}`,
      };
    }
    if (probe.accepted !== null) {
      // What the worker ends up sending: it halves on each too_many_events.
      let halved = configured;
      while (halved > probe.accepted) halved = Math.floor(halved / 2);
      return {
        name: "batch_size",
        ok: false,
        detail:
          `Lago refuses batches of ${configured} (too_many_events) and accepts ${probe.accepted}: the worker ` +
          `halves its batches when told, so delivery goes on at ${halved} per request.${learned}`,
        fix: `set LAGO_BATCH_SIZE=${probe.accepted} (or raise LAGO_EVENTS_BATCH_MAX_LENGTH on the Lago side)`,
      };
    }
    return {
      name: "batch_size",
      ok: false,
      detail: `could not tell the batch length Lago accepts: ${probe.detail}.${learned}`,
    };
  } catch (err) {
    return {
      name: "batch_size",
      ok: false,
      detail: `the batch length probe failed: ${(err as Error).message}`,
    };
  }
}

async function rateLimitCheck(service: Service): Promise<Check> {
  const minutes = 15;
  const [r] = await service.sql.unsafe<
    { attempts: number; rate_limited: number; last_rate_limited_at: Date | null }[]
  >(query("recent_rate_limits"), [minutes]);
  const sink = service.sink.snapshot();
  const max = service.settings.lago.rateLimitMaxPauseSeconds;
  const recent =
    `${r?.rate_limited ?? 0} of ${r?.attempts ?? 0} delivery requests in the last ${minutes} min answered 429` +
    (r?.last_rate_limited_at ? ` (last at ${new Date(r.last_rate_limited_at).toISOString()})` : "");
  const paused = sink.state === "rate_limited";
  return {
    name: "rate_limit",
    ok: !paused,
    detail:
      `${paused ? `paused until ${sink.until?.toISOString()}: ${sink.error}` : "not rate limited now"}; ${recent}; ` +
      `pauses are capped at ${max} s (LAGO_RATE_LIMIT_MAX_PAUSE_SECONDS)` +
      (service.settings.lago.rateLimitRps > 0
        ? `; client-side cap ${service.settings.lago.rateLimitRps} req/s`
        : ""),
    ...(paused ? { fix: "wait, or lower LAGO_RATE_LIMIT_RPS below Lago's limit" } : {}),
  };
}

async function subscriptionsCheck(service: Service): Promise<Check> {
  const lago = service.lago;
  if (!lago) return { name: "subscriptions", ok: false, detail: "Lago is not configured" };
  const { findings, unchecked } = await auditLedger(service.sql, lago.resolver, service.settings.lago);
  if (findings.length === 0) {
    return { name: "subscriptions", ok: true, detail: "no customers with usage to bill or in the last day" };
  }
  const problems = findings.filter((f) => !f.ok);
  const more = unchecked > 0 ? ` (${unchecked} more customers not checked)` : "";
  return {
    name: "subscriptions",
    ok: problems.length === 0,
    detail:
      problems.length === 0
        ? `the ${findings.length} customers with usage to bill or in the last day each map to a Lago ` +
          `subscription that covers it${more}`
        : `${problems.map((f) => `${f.problem} [Lago: ${f.lago}]`).join("; ")}${more}`,
    ...(problems.length === 0
      ? {}
      : { fix: "do what each problem says, then `webhook-service reprocess --state unbillable`" }),
  };
}
