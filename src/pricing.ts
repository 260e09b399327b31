import { readFileSync } from "node:fs";
import YAML from "yaml";
import { fromUnits, mulInt } from "./decimal.ts";

/** Per-token prices of one model, as written in config.yaml's model_info (USD per token). */
export interface ModelPrice {
  input: string;
  output: string;
  cacheRead: string | undefined;
  cacheWrite: string | undefined;
}

export interface ConfiguredModel {
  name: string; // the public model_name (LiteLLM's model group)
  model: string; // litellm_params.model, e.g. openai/gpt-4o
  provider: string;
  price: ModelPrice | undefined;
}

function priceText(v: unknown): string | undefined {
  if (typeof v === "number" && Number.isFinite(v)) return String(v);
  if (typeof v === "string" && /^\d*\.?\d+(e-?\d+)?$/i.test(v)) return String(Number(v));
  return undefined;
}

/** Reads model_list from a LiteLLM config.yaml. Missing file: empty list (pricing is then off). */
export function loadConfiguredModels(path: string): ConfiguredModel[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return [];
  }
  const doc = YAML.parse(text) as { model_list?: unknown[] } | null;
  const list = Array.isArray(doc?.model_list) ? doc.model_list : [];
  const out: ConfiguredModel[] = [];
  for (const entry of list) {
    const e = entry as {
      model_name?: string;
      litellm_params?: Record<string, unknown>;
      model_info?: Record<string, unknown>;
    };
    if (typeof e.model_name !== "string") continue;
    const params = e.litellm_params ?? {};
    const info = { ...params, ...(e.model_info ?? {}) };
    const model = typeof params.model === "string" ? params.model : e.model_name;
    const input = priceText(info.input_cost_per_token);
    const output = priceText(info.output_cost_per_token);
    out.push({
      name: e.model_name,
      model,
      provider: model.includes("/") ? (model.split("/")[0] as string) : "openai",
      price:
        input !== undefined && output !== undefined
          ? {
              input,
              output,
              cacheRead: priceText(info.cache_read_input_token_cost),
              cacheWrite: priceText(info.cache_creation_input_token_cost),
            }
          : undefined,
    });
  }
  return out;
}

export interface TokenCounts {
  input: number; // all prompt tokens, cache reads and writes included
  output: number;
  cached: number; // part of input read from the cache
  cacheWrite: number; // part of input written to the cache
}

/**
 * Cost of a call from configured prices, exact to 18 decimal places: uncached input at the input
 * price, cache reads and writes at their own prices when configured (else the input price), output
 * at the output price.
 */
export function priceCall(price: ModelPrice, t: TokenCounts): string {
  const uncached = Math.max(0, t.input - t.cached - t.cacheWrite);
  const units =
    mulInt(price.input, uncached) +
    mulInt(price.cacheRead ?? price.input, t.cached) +
    mulInt(price.cacheWrite ?? price.input, t.cacheWrite) +
    mulInt(price.output, t.output);
  return fromUnits(units);
}

/** Looks up prices by public model name, then by the provider model id. */
export class PriceBook {
  readonly #byName = new Map<string, ModelPrice>();

  constructor(models: ConfiguredModel[]) {
    for (const m of models) {
      if (!m.price) continue;
      this.#byName.set(m.name, m.price);
      if (!this.#byName.has(m.model)) this.#byName.set(m.model, m.price);
      const bare = m.model.split("/").slice(1).join("/");
      if (bare && !this.#byName.has(bare)) this.#byName.set(bare, m.price);
    }
  }

  get(model: string | undefined): ModelPrice | undefined {
    return model === undefined ? undefined : this.#byName.get(model);
  }
}
