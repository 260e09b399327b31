import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { addCustomer, LagoSetupError, lagoSetup, unitAmount } from "../../src/completeness/lago-setup.ts";
import { createTestDatabase, type TestDatabase } from "../support/db.ts";
import { LagoDouble } from "../support/lago-double.ts";
import { CLI } from "../support/process.ts";
import { startService, type TestService } from "../support/service.ts";

const MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "command-r", "azure-gpt-4o"];
// The test's own config.yaml: the project's may gain models at any time.
const CONFIG = `model_list:
  - model_name: gpt-4o
    litellm_params: { model: openai/gpt-4o }
    model_info: { input_cost_per_token: 0.000005, output_cost_per_token: 0.000015 }
  - model_name: gpt-4o-mini
    litellm_params: { model: openai/gpt-4o-mini }
    model_info: { input_cost_per_token: 0.00000015, output_cost_per_token: 0.0000006, cache_read_input_token_cost: 0.000000075 }
  - model_name: claude-3-5-sonnet
    litellm_params: { model: anthropic/claude-3-5-sonnet-20241022 }
    model_info:
      input_cost_per_token: 0.000003
      output_cost_per_token: 0.000015
      cache_read_input_token_cost: 0.0000003
      cache_creation_input_token_cost: 0.00000375
  - model_name: command-r
    litellm_params: { model: cohere/command-r-08-2024 }
    model_info: { input_cost_per_token: 0.00000015, output_cost_per_token: 0.0000006 }
  - model_name: azure-gpt-4o
    litellm_params: { model: azure/gpt-4o }
    model_info: { input_cost_per_token: 0.000005, output_cost_per_token: 0.000015 }
`;
let configDir: string;
let configPath: string;
const TYPES = ["input", "output", "cached_input", "cache_write", "reasoning"];

let lago: LagoDouble;
let db: TestDatabase;
const services: TestService[] = [];

beforeAll(async () => {
  lago = await LagoDouble.start({ apiKey: "lago-key" });
  db = await createTestDatabase();
  configDir = mkdtempSync(join(tmpdir(), "lago-setup-"));
  configPath = join(configDir, "config.yaml");
  writeFileSync(configPath, CONFIG);
});
afterAll(async () => {
  for (const s of services) await s.close();
  await db?.drop();
  await lago?.close();
  rmSync(configDir, { recursive: true, force: true });
});
beforeEach(() => {
  lago.reset({ entities: true });
});

async function service(env: Record<string, string> = {}) {
  const s = await startService(db.url, {
    LAGO_WEBHOOK_URL: lago.url,
    LAGO_API_KEY: "lago-key",
    LITELLM_CONFIG_PATH: configPath,
    ...env,
  });
  services.push(s);
  return s.service;
}

const metric = async (code: string) => {
  const res = await fetch(`${lago.url}/api/v1/billable_metrics/${code}`, {
    headers: { authorization: "Bearer lago-key" },
  });
  return res.status === 200
    ? ((await res.json()) as { billable_metric: Record<string, unknown> }).billable_metric
    : null;
};
const plan = async (code: string) => {
  const res = await fetch(`${lago.url}/api/v1/plans/${code}`, {
    headers: { authorization: "Bearer lago-key" },
  });
  return res.status === 200 ? ((await res.json()) as { plan: Record<string, unknown> }).plan : null;
};
/** Requests that could change something in Lago. */
const lagoWrites = () => lago.requests.filter((r) => r.method !== "GET").length;

describe("lago setup (tokens mode)", () => {
  it("creates the metric once, with every model and token type, and changes nothing on a second run", async () => {
    const svc = await service();
    const first = await lagoSetup(svc);
    expect(first.steps).toEqual([
      { resource: "billable_metric", code: "llm_tokens", action: "created", detail: "sum_agg on tokens" },
    ]);
    expect(first.warnings).toEqual([]);
    const created = await metric("llm_tokens");
    expect(created).toMatchObject({
      code: "llm_tokens",
      aggregation_type: "sum_agg",
      field_name: "tokens",
      filters: [
        { key: "model", values: MODELS },
        { key: "type", values: TYPES },
      ],
    });
    const writes = lagoWrites();
    const second = await lagoSetup(svc);
    expect(second).toEqual({
      steps: [{ resource: "billable_metric", code: "llm_tokens", action: "unchanged" }],
      warnings: [],
    });
    expect(lagoWrites()).toBe(writes);
    expect(await metric("llm_tokens")).toEqual(created);
  });

  it("warns about models missing from an existing metric and adds them, keeping other values", async () => {
    lago.addMetric("llm_tokens", {
      filters: [
        { key: "model", values: ["gpt-4o", "retired-model"] },
        { key: "type", values: TYPES },
      ],
    });
    const svc = await service();
    const dry = await lagoSetup(svc, { dryRun: true });
    expect(dry.steps[0]?.action).toBe("would_update");
    expect((await metric("llm_tokens"))?.filters).toEqual([
      { key: "model", values: ["gpt-4o", "retired-model"] },
      { key: "type", values: TYPES },
    ]);
    const r = await lagoSetup(svc);
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]).toMatch(
      /gpt-4o-mini, claude-3-5-sonnet, command-r, azure-gpt-4o .*missing.*default price/,
    );
    expect(r.steps[0]).toMatchObject({ action: "updated" });
    expect((await metric("llm_tokens"))?.filters).toEqual([
      { key: "model", values: ["gpt-4o", "retired-model", ...MODELS.slice(1)] },
      { key: "type", values: TYPES },
    ]);
    expect((await lagoSetup(svc)).steps[0]?.action).toBe("unchanged");
  });

  it("warns when an existing metric aggregates something else, without changing it", async () => {
    lago.addMetric("llm_tokens", { aggregationType: "count_agg", fieldName: "", filters: [] });
    const r = await lagoSetup(await service(), { dryRun: true });
    expect(r.warnings.some((w) => /aggregates count_agg/.test(w))).toBe(true);
  });

  it("creates a plan priced from config.yaml plus a markup, once", async () => {
    const svc = await service();
    const r = await lagoSetup(svc, { plan: "llm-plan", markupPercent: 20 });
    expect(r.steps.map((s) => [s.resource, s.action])).toEqual([
      ["billable_metric", "created"],
      ["plan", "created"],
    ]);
    const p = await plan("llm-plan");
    const bm = await metric("llm_tokens");
    expect(p).toMatchObject({
      code: "llm-plan",
      interval: "monthly",
      amount_cents: 0,
      amount_currency: "USD",
    });
    const [charge] = (p?.charges ?? []) as {
      lago_billable_metric_id: string;
      charge_model: string;
      properties: { amount: string };
      filters: { values: { model: string[]; type: string[] }; properties: { amount: string } }[];
    }[];
    expect(charge?.lago_billable_metric_id).toBe(bm?.lago_id);
    expect(charge?.charge_model).toBe("standard");
    expect(charge?.filters).toHaveLength(MODELS.length * TYPES.length);
    const price = (model: string, type: string) =>
      charge?.filters.find((f) => f.values.model[0] === model && f.values.type[0] === type)?.properties
        .amount;
    expect(price("gpt-4o", "input")).toBe("0.000006");
    expect(price("gpt-4o", "output")).toBe("0.000018");
    expect(price("gpt-4o", "reasoning")).toBe("0.000018");
    expect(price("gpt-4o-mini", "cached_input")).toBe("0.00000009");
    expect(price("gpt-4o-mini", "cache_write")).toBe("0.00000018");
    expect(price("claude-3-5-sonnet", "cache_write")).toBe("0.0000045");
    const writes = lagoWrites();
    const again = await lagoSetup(svc, { plan: "llm-plan", markupPercent: 20 });
    expect(again.steps.map((s) => s.action)).toEqual(["unchanged", "unchanged"]);
    expect(again.warnings).toEqual([]);
    expect(lagoWrites()).toBe(writes);
  });

  it("finds the plan's charge by Lago's own field names (charge_serializer.rb)", async () => {
    const svc = await service();
    await lagoSetup(svc, { plan: "llm-plan" });
    // A charge that names its metric only by lago_billable_metric_id is still this metric's charge.
    const charge = lago.plans.get("llm-plan")?.charges[0] as Record<string, unknown>;
    delete charge.billable_metric_code;
    const r = await lagoSetup(svc, { plan: "llm-plan" });
    expect(r.warnings.filter((w) => /has no charge/.test(w))).toEqual([]);
    expect(r.steps.map((s) => s.action)).toEqual(["unchanged", "unchanged"]);
  });

  it("computes prices exactly", () => {
    expect(unitAmount("0.000005", 0)).toBe("0.000005");
    expect(unitAmount("0.00000015", 33.3)).toBe("0.00000019995");
  });

  it("needs Lago to be configured", async () => {
    const s = await startService(db.url);
    services.push(s);
    await expect(lagoSetup(s.service)).rejects.toBeInstanceOf(LagoSetupError);
    // One name everywhere: the README's, validate's and the worker's.
    await expect(lagoSetup(s.service)).rejects.toThrow(
      "LAGO_API_URL (or LAGO_WEBHOOK_URL) and LAGO_API_KEY must be set to set Lago up",
    );
  });
});

describe("lago setup (cost mode)", () => {
  it("creates a units metric and a plan with a dynamic charge", async () => {
    const svc = await service({ LAGO_BILLING_MODE: "cost" });
    const r = await lagoSetup(svc, { plan: "cost-plan", markupPercent: 10 });
    expect(r.warnings.some((w) => /LAGO_COST_MARKUP_PERCENT/.test(w))).toBe(true);
    expect(await metric("llm_cost")).toMatchObject({ aggregation_type: "sum_agg", field_name: "units" });
    expect((await plan("cost-plan"))?.charges).toMatchObject([{ charge_model: "dynamic" }]);
    expect((await lagoSetup(svc, { plan: "cost-plan" })).steps.map((s) => s.action)).toEqual([
      "unchanged",
      "unchanged",
    ]);
  });
});

describe("lago customer add", () => {
  it("creates the customer and its subscription under the mapped id, once", async () => {
    const svc = await service({
      LAGO_SUBSCRIPTION_MAPPING: "template",
      LAGO_SUBSCRIPTION_TEMPLATE: "sub_{customer_id}",
    });
    await lagoSetup(svc, { plan: "llm-plan" });
    const from = new Date("2026-01-01T00:00:00Z");
    const r = await addCustomer(svc, {
      externalId: "acme",
      name: "Acme",
      plan: "llm-plan",
      subscriptionAt: from,
    });
    expect(r.steps).toEqual([
      { resource: "customer", code: "acme", action: "created" },
      {
        resource: "subscription",
        code: "sub_acme",
        action: "created",
        detail: `plan llm-plan, from ${from.toISOString()}`,
      },
    ]);
    const sub = lago.subscriptions.get("sub_acme");
    expect(sub).toMatchObject({
      external_customer_id: "acme",
      plan_code: "llm-plan",
      subscription_at: "2026-01-01T00:00:00Z",
    });
    expect(lago.customers.get("acme")?.name).toBe("Acme");
    const again = await addCustomer(svc, { externalId: "acme", name: "Acme", plan: "llm-plan" });
    expect(again.steps.map((s) => s.action)).toEqual(["unchanged", "unchanged"]);
    const other = await addCustomer(svc, { externalId: "acme", plan: "other-plan" });
    expect(other.warnings.some((w) => /exists on plan "llm-plan"/.test(w))).toBe(true);
  });

  it("works from the command line", async () => {
    lago.addSubscription("seed", "seed", "llm-plan");
    // Not spawnSync: the Lago double answers from this process's event loop.
    const child = spawn(process.execPath, [CLI, "lago", "customer", "add", "globex", "--plan", "llm-plan"], {
      env: {
        ...process.env,
        DATABASE_URL: db.url,
        LAGO_WEBHOOK_URL: lago.url,
        LAGO_API_KEY: "lago-key",
        LITELLM_CONFIG_PATH: configPath,
        LOG_LEVEL: "silent",
      },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => {
      stdout += c;
    });
    child.stderr.on("data", (c: Buffer) => {
      stderr += c;
    });
    const status = await new Promise<number | null>((resolve) => child.on("close", resolve));
    expect(status, stderr).toBe(0);
    expect(JSON.parse(stdout).steps).toEqual([
      { resource: "customer", code: "globex", action: "created" },
      { resource: "subscription", code: "globex", action: "created", detail: "plan llm-plan" },
    ]);
  });
});
