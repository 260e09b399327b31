import type { Service } from "../service.ts";

/** GET /webhooks/validate: can we reach Lago with this key, and does the metric exist? */
export async function validateLago(service: Service) {
  const { settings } = service;
  const code = settings.lago.billingMode === "cost" ? settings.lago.costMetricCode : settings.lago.metricCode;
  if (!service.lago) {
    return {
      ok: false,
      lago_url: settings.lago.url ?? null,
      problems: [
        "LAGO_API_URL (or LAGO_WEBHOOK_URL) and LAGO_API_KEY must both be set; until then usage is stored but not delivered",
      ],
    };
  }
  const problems: string[] = [];
  const started = performance.now();
  let auth: "ok" | "failed" | "unreachable" = "ok";
  let metric: boolean | null = null;
  try {
    const res = await service.lago.client.request(
      "GET",
      `/api/v1/billable_metrics/${encodeURIComponent(code)}`,
    );
    if (res.status === 401 || res.status === 403) {
      auth = "failed";
      problems.push(`Lago refused the API key (${res.status}): check LAGO_API_KEY`);
    } else if (res.status === 404) {
      metric = false;
      problems.push(`billable metric "${code}" does not exist: run \`webhook-service lago setup\``);
    } else if (res.status === 200) {
      metric = true;
    } else {
      problems.push(`Lago answered ${res.status} to GET /api/v1/billable_metrics/${code}`);
    }
  } catch (err) {
    auth = "unreachable";
    problems.push(`cannot reach Lago at ${settings.lago.url}: ${(err as Error).message}`);
  }
  return {
    ok: problems.length === 0,
    lago_url: settings.lago.url,
    latency_ms: Math.round(performance.now() - started),
    auth,
    billing_mode: settings.lago.billingMode,
    metric: { code, exists: metric },
    subscription_mapping: settings.lago.subscriptionMapping,
    sink: service.sink.snapshot(),
    problems,
  };
}
