import { fromUnits, mulDec, toUnits, UNIT } from "../decimal.ts";
import type { LagoClient, LagoResponse } from "../lago/client.ts";
import { staticSubscriptionId, type TokenType } from "../lago/mapping.ts";
import { auditLedger } from "../lago/subscription-audit.ts";
import { describeSpan, type SubscriptionView } from "../lago/subscription-span.ts";
import { type ConfiguredModel, loadConfiguredModels, type ModelPrice } from "../pricing.ts";
import type { Service } from "../service.ts";
import type { Settings } from "../settings.ts";

/** Every token type the tokens mode sends (lago/mapping.ts tokenParts), in a stable order. */
export const TOKEN_TYPES: readonly TokenType[] = [
  "input",
  "output",
  "cached_input",
  "cache_write",
  "reasoning",
];

export class LagoSetupError extends Error {
  override name = "LagoSetupError";
}

export type LagoAdmin = Pick<Service, "settings" | "lago" | "sql">;

export interface SetupOptions {
  /** Also create this plan (if missing), with per-model prices from config.yaml. */
  plan?: string | undefined;
  /** Added to config.yaml's prices in the plan (tokens mode), e.g. 20 for +20 %. */
  markupPercent?: number | undefined;
  currency?: string | undefined;
  /** Say what would change; change nothing. */
  dryRun?: boolean | undefined;
  /** config.yaml's models (default: read from LITELLM_CONFIG_PATH). */
  models?: ConfiguredModel[] | undefined;
}

export type Action = "created" | "updated" | "unchanged" | "would_create" | "would_update";

export interface SetupStep {
  resource: "billable_metric" | "plan" | "customer" | "subscription";
  code: string;
  action: Action;
  detail?: string;
}

export interface SetupResult {
  steps: SetupStep[];
  warnings: string[];
}

interface MetricFilter {
  key: string;
  values: string[];
}

interface Metric {
  lago_id?: string;
  code: string;
  aggregation_type?: string;
  field_name?: string | null;
  filters?: MetricFilter[];
}

/** A plan's charge as Lago serialises it (app/serializers/v1/charge_serializer.rb). */
interface Charge {
  lago_billable_metric_id?: string;
  billable_metric_code?: string;
  charge_model?: string;
  filters?: { values?: Record<string, string[]> }[];
}

function client(admin: LagoAdmin): LagoClient {
  if (!admin.lago) {
    throw new LagoSetupError(
      "LAGO_API_URL (or LAGO_WEBHOOK_URL) and LAGO_API_KEY must be set to set Lago up",
    );
  }
  return admin.lago.client;
}

async function call(
  lago: LagoClient,
  method: "GET" | "POST" | "PUT",
  path: string,
  body?: unknown,
  expect: number[] = [200],
): Promise<LagoResponse> {
  let res: LagoResponse;
  try {
    res = await lago.request(method, path, body);
  } catch (err) {
    throw new LagoSetupError(`Lago unreachable (${method} ${path}): ${(err as Error).message}`);
  }
  if (!expect.includes(res.status)) {
    const text = typeof res.body === "string" ? res.body : JSON.stringify(res.body);
    throw new LagoSetupError(`${method} ${path} answered ${res.status}: ${text.slice(0, 500)}`);
  }
  return res;
}

const uniqueNames = (models: ConfiguredModel[]) => [...new Set(models.map((m) => m.name))];

/** The metric the configured billing mode sends events to. */
function wantedMetric(settings: Settings["lago"], models: ConfiguredModel[]) {
  if (settings.billingMode === "cost") {
    return {
      name: "LLM cost",
      code: settings.costMetricCode,
      description: "One unit per LLM call; the amount comes from each event (dynamic charge)",
      aggregation_type: "sum_agg",
      field_name: "units",
      recurring: false,
      filters: [] as MetricFilter[],
    };
  }
  return {
    name: "LLM tokens",
    code: settings.metricCode,
    description: "LLM tokens per model and token type (one event per call and type)",
    aggregation_type: "sum_agg",
    field_name: "tokens",
    recurring: false,
    filters: [
      { key: "model", values: uniqueNames(models) },
      { key: "type", values: [...TOKEN_TYPES] },
    ],
  };
}

/**
 * Creates the billable metric (and optionally a plan) the configured billing mode needs, and only
 * what is missing: a second run changes nothing. An existing metric gains the filter values
 * config.yaml added (values are never removed: past events use them); a model missing from the
 * filters is warned about because its events would be billed at the charge's default price. An
 * existing plan's prices are never changed (they are a business decision): gaps are warned about.
 */
export async function lagoSetup(admin: LagoAdmin, opts: SetupOptions = {}): Promise<SetupResult> {
  const lago = client(admin);
  const settings = admin.settings.lago;
  const models = opts.models ?? loadConfiguredModels(admin.settings.litellmConfigPath);
  const steps: SetupStep[] = [];
  const warnings: string[] = [];
  if (models.length === 0) {
    warnings.push(
      `no models in ${admin.settings.litellmConfigPath} (LITELLM_CONFIG_PATH): the metric gets no model filter values`,
    );
  }
  const wanted = wantedMetric(settings, models);
  const path = `/api/v1/billable_metrics/${encodeURIComponent(wanted.code)}`;
  const found = await call(lago, "GET", path, undefined, [200, 404]);
  let metric: Metric;
  if (found.status === 404) {
    if (opts.dryRun) {
      steps.push({ resource: "billable_metric", code: wanted.code, action: "would_create" });
      metric = { code: wanted.code, filters: wanted.filters };
    } else {
      const res = await call(lago, "POST", "/api/v1/billable_metrics", { billable_metric: wanted });
      metric = (res.body as { billable_metric: Metric }).billable_metric;
      steps.push({
        resource: "billable_metric",
        code: wanted.code,
        action: "created",
        detail: `${wanted.aggregation_type} on ${wanted.field_name}`,
      });
    }
  } else {
    metric = (found.body as { billable_metric: Metric }).billable_metric;
    if (metric.aggregation_type !== wanted.aggregation_type || metric.field_name !== wanted.field_name) {
      warnings.push(
        `billable metric "${wanted.code}" aggregates ${metric.aggregation_type} on ${metric.field_name ?? "no field"}; ` +
          `this service needs ${wanted.aggregation_type} on ${wanted.field_name}: fix it in Lago (not changed here)`,
      );
    }
    const { merged, missing } = mergeFilters(metric.filters ?? [], wanted.filters);
    if (missing.length === 0) {
      steps.push({ resource: "billable_metric", code: wanted.code, action: "unchanged" });
    } else {
      for (const m of missing) {
        warnings.push(
          m.key === "model"
            ? `model(s) ${m.values.join(", ")} in config.yaml missing from metric "${wanted.code}"'s model filter: ` +
                "their events would be billed at the charge's default price"
            : `value(s) ${m.values.join(", ")} missing from metric "${wanted.code}"'s ${m.key} filter`,
        );
      }
      const detail = `filter values added: ${missing.map((m) => `${m.key}=${m.values.join("|")}`).join(", ")}`;
      if (opts.dryRun) {
        steps.push({ resource: "billable_metric", code: wanted.code, action: "would_update", detail });
      } else {
        const res = await call(lago, "PUT", path, { billable_metric: { filters: merged } });
        metric = (res.body as { billable_metric: Metric }).billable_metric;
        steps.push({ resource: "billable_metric", code: wanted.code, action: "updated", detail });
      }
    }
  }
  if (opts.plan) await setupPlan(lago, settings, models, metric, opts, steps, warnings);
  warnings.push(...(await ledgerSubscriptionWarnings(admin)));
  return { steps, warnings };
}

/**
 * Usage already in the ledger that Lago would store and not bill: before a subscription's start,
 * after its termination, for a pending or missing one. Said with the exact dates, so the operator
 * can create or move subscriptions before the events go out.
 */
async function ledgerSubscriptionWarnings(admin: LagoAdmin): Promise<string[]> {
  if (!admin.lago) return [];
  const { findings, unchecked } = await auditLedger(admin.sql, admin.lago.resolver, admin.settings.lago);
  const warnings = findings.flatMap((f) => (f.problem === null ? [] : [f.problem]));
  if (unchecked > 0) {
    warnings.push(`subscriptions of ${unchecked} more customer(s) with usage were not checked`);
  }
  return warnings;
}

/** Existing filters plus the wanted values they lack; `missing` lists what was added. */
export function mergeFilters(
  existing: MetricFilter[],
  wanted: MetricFilter[],
): { merged: MetricFilter[]; missing: MetricFilter[] } {
  const merged = existing.map((f) => ({ key: f.key, values: [...f.values] }));
  const missing: MetricFilter[] = [];
  for (const w of wanted) {
    let f = merged.find((x) => x.key === w.key);
    if (!f) {
      f = { key: w.key, values: [] };
      merged.push(f);
    }
    const lacking = w.values.filter((v) => !f.values.includes(v));
    if (lacking.length > 0) {
      f.values.push(...lacking);
      missing.push({ key: w.key, values: lacking });
    }
  }
  return { merged, missing };
}

/** Per-token price of one token type: cache prices fall back to the input price, reasoning is output. */
function typePrice(price: ModelPrice, type: TokenType): string {
  switch (type) {
    case "input":
      return price.input;
    case "output":
    case "reasoning":
      return price.output;
    case "cached_input":
      return price.cacheRead ?? price.input;
    case "cache_write":
      return price.cacheWrite ?? price.input;
  }
}

/** USD per token × (1 + markup %), exact. */
export function unitAmount(perToken: string, markupPercent: number): string {
  const factor = UNIT + toUnits(markupPercent) / 100n;
  return fromUnits(mulDec(toUnits(perToken), factor));
}

function chargeFor(
  settings: Settings["lago"],
  models: ConfiguredModel[],
  metric: Metric,
  markup: number,
  warnings: string[],
) {
  if (settings.billingMode === "cost") {
    return { billable_metric_id: metric.lago_id, charge_model: "dynamic", invoiceable: true, properties: {} };
  }
  const filters: unknown[] = [];
  const priced = new Set<string>();
  for (const m of models) {
    if (priced.has(m.name)) continue;
    if (!m.price) {
      warnings.push(
        `model "${m.name}" has no input/output_cost_per_token in config.yaml: no price in the plan, its ` +
          "tokens are billed at the charge's default price (0)",
      );
      continue;
    }
    priced.add(m.name);
    for (const type of TOKEN_TYPES) {
      filters.push({
        invoice_display_name: `${m.name} ${type.replace("_", " ")} tokens`,
        properties: { amount: unitAmount(typePrice(m.price, type), markup) },
        values: { model: [m.name], type: [type] },
      });
    }
  }
  return {
    billable_metric_id: metric.lago_id,
    charge_model: "standard",
    invoiceable: true,
    invoice_display_name: "LLM tokens",
    properties: { amount: "0" },
    filters,
  };
}

async function setupPlan(
  lago: LagoClient,
  settings: Settings["lago"],
  models: ConfiguredModel[],
  metric: Metric,
  opts: SetupOptions,
  steps: SetupStep[],
  warnings: string[],
): Promise<void> {
  const code = opts.plan as string;
  const currency = opts.currency ?? "USD";
  const markup = opts.markupPercent ?? 0;
  if (currency !== "USD") {
    warnings.push(`config.yaml's prices are USD; the plan uses them as ${currency} amounts unchanged`);
  }
  if (settings.billingMode === "cost" && markup !== 0) {
    warnings.push(
      "--markup is ignored in cost mode: the amount is on each event; set LAGO_COST_MARKUP_PERCENT instead",
    );
  }
  const path = `/api/v1/plans/${encodeURIComponent(code)}`;
  const found = await call(lago, "GET", path, undefined, [200, 404]);
  if (found.status === 200) {
    const plan = (found.body as { plan: { charges?: Charge[] } }).plan;
    const charge = (plan.charges ?? []).find(
      (c) =>
        c.billable_metric_code === metric.code ||
        (metric.lago_id !== undefined && c.lago_billable_metric_id === metric.lago_id),
    );
    if (!charge) {
      warnings.push(
        `plan "${code}" has no charge on metric "${metric.code}": its events are not billed by it`,
      );
    } else if (settings.billingMode === "tokens") {
      const covered = new Set(
        (charge.filters ?? []).flatMap((f) =>
          (f.values?.model ?? []).flatMap((m) => (f.values?.type ?? []).map((t) => `${m}\n${t}`)),
        ),
      );
      const gaps = uniqueNames(models).filter((m) => TOKEN_TYPES.some((t) => !covered.has(`${m}\n${t}`)));
      if (gaps.length > 0) {
        warnings.push(
          `plan "${code}" has no price for some token types of model(s) ${gaps.join(", ")}: those are billed ` +
            "at the charge's default price (prices of an existing plan are not changed here)",
        );
      }
    }
    steps.push({ resource: "plan", code, action: "unchanged" });
    return;
  }
  if (opts.dryRun) {
    steps.push({ resource: "plan", code, action: "would_create" });
    return;
  }
  const charge = chargeFor(settings, models, metric, markup, warnings);
  await call(lago, "POST", "/api/v1/plans", {
    plan: {
      name: code,
      code,
      interval: "monthly",
      amount_cents: 0,
      amount_currency: currency,
      pay_in_advance: false,
      description: "LLM usage billed from the LiteLLM proxy",
      charges: [charge],
    },
  });
  steps.push({
    resource: "plan",
    code,
    action: "created",
    detail:
      settings.billingMode === "cost"
        ? "dynamic charge (amount on each event)"
        : `per-token prices of ${models.filter((m) => m.price).length} model(s)${markup ? ` +${markup}%` : ""}`,
  });
}

export interface CustomerOptions {
  externalId: string;
  name?: string | undefined;
  plan?: string | undefined;
  subscriptionId?: string | undefined;
  subscriptionAt?: Date | undefined;
}

/**
 * Creates a customer and, with a plan, the subscription its events are sent to, under the id the
 * configured LAGO_SUBSCRIPTION_MAPPING derives (so events are billed without a lookup). Both steps
 * are idempotent: an existing subscription is left as it is, even on another plan.
 */
export async function addCustomer(admin: LagoAdmin, opts: CustomerOptions): Promise<SetupResult> {
  const lago = client(admin);
  const settings = admin.settings.lago;
  const steps: SetupStep[] = [];
  const warnings: string[] = [];
  const id = opts.externalId;
  const path = `/api/v1/customers/${encodeURIComponent(id)}`;
  const found = await call(lago, "GET", path, undefined, [200, 404]);
  const existing = (found.body as { customer?: { name?: string | null } } | null)?.customer;
  if (found.status === 404 || (opts.name !== undefined && existing?.name !== opts.name)) {
    await call(lago, "POST", "/api/v1/customers", {
      customer: { external_id: id, ...(opts.name !== undefined ? { name: opts.name } : {}) },
    });
    steps.push({ resource: "customer", code: id, action: found.status === 404 ? "created" : "updated" });
  } else {
    steps.push({ resource: "customer", code: id, action: "unchanged" });
  }
  const mapped = staticSubscriptionId(settings, id);
  if (!opts.plan) {
    warnings.push(
      `no --plan: customer "${id}" has no subscription from this command; its events are parked as ` +
        "unbillable until one exists",
    );
    return { steps, warnings };
  }
  const subscriptionId = opts.subscriptionId ?? mapped ?? id;
  if (mapped !== null && subscriptionId !== mapped) {
    warnings.push(
      `LAGO_SUBSCRIPTION_MAPPING=${settings.subscriptionMapping} sends this customer's events to ` +
        `subscription "${mapped}", not "${subscriptionId}"`,
    );
  }
  // Lago's GET /subscriptions/:id finds only active ones unless asked: ask for every status.
  let view: SubscriptionView;
  try {
    view = await (admin.lago as NonNullable<LagoAdmin["lago"]>).resolver.describe({
      kind: "subscription",
      id: subscriptionId,
    });
  } catch (err) {
    throw new LagoSetupError(
      `cannot read subscription "${subscriptionId}" from Lago: ${(err as Error).message}`,
    );
  }
  const current = view.active[0] ?? view.pending[0];
  if (current) {
    if (current.planCode && current.planCode !== opts.plan) {
      warnings.push(`subscription "${subscriptionId}" exists on plan "${current.planCode}": not changed`);
    }
    if (current.status === "pending") {
      warnings.push(
        `subscription "${subscriptionId}" is ${describeSpan(current)}: calls before then are parked as ` +
          "unbillable; to bill earlier usage, move its subscription_at back in Lago while it is pending",
      );
    }
    if (
      opts.subscriptionAt &&
      current.status === "active" &&
      current.startedAt !== null &&
      opts.subscriptionAt.getTime() < current.startedAt
    ) {
      warnings.push(
        `subscription "${subscriptionId}" is ${describeSpan(current)}: --subscription-at ` +
          `${opts.subscriptionAt.toISOString()} is not applied (Lago cannot move an active subscription's start)`,
      );
    }
    steps.push({
      resource: "subscription",
      code: subscriptionId,
      action: "unchanged",
      detail: describeSpan(current),
    });
    return { steps, warnings };
  }
  const previous = view.terminated[0];
  await call(lago, "POST", "/api/v1/subscriptions", {
    subscription: {
      external_customer_id: id,
      plan_code: opts.plan,
      external_id: subscriptionId,
      billing_time: "calendar",
      ...(opts.subscriptionAt ? { subscription_at: opts.subscriptionAt.toISOString() } : {}),
    },
  });
  steps.push({
    resource: "subscription",
    code: subscriptionId,
    action: "created",
    detail:
      `plan ${opts.plan}${opts.subscriptionAt ? `, from ${opts.subscriptionAt.toISOString()}` : ""}` +
      (previous ? ` (the previous one was ${describeSpan(previous)})` : ""),
  });
  return { steps, warnings };
}
