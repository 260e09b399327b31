import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import YAML from "yaml";
import { demoModels } from "../../scripts/demo-config.ts";
import { freePort, waitHealthy } from "./process.ts";

export const LITELLM_BIN = resolve(".venv/litellm/bin/litellm");
export const MASTER_KEY = "sk-test-master-key";

export interface ProxyOptions {
  upstream: string; // fake OpenAI base URL (…/v1)
  callbacks: "ours" | "lago" | "none";
  webhookUrl?: string;
  webhookSecret?: string;
  lagoUrl?: string;
  lagoApiKey?: string;
  redisNamespace?: string;
  env?: Record<string, string>;
  /** Use the repository's config.yaml unchanged (placeholder provider keys), instead of the test variant. */
  realConfig?: boolean;
  /**
   * Also load the entitlement pre-call hook (proxy/lago_entitlements.py), reading the webhook
   * service's decisions from this Redis under this prefix (ENTITLEMENT_REDIS_PREFIX).
   */
  entitlements?: { redisUrl: string; prefix: string; failMode?: "open" | "closed"; pollInterval?: number };
}

export interface LiteLLMProxy {
  url: string;
  dir: string;
  child: ChildProcess;
  output: () => string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * The repository's config.yaml, re-pointed at the fake upstream: every model keeps its public name
 * and its model_info prices; only litellm_params change. The callback module sits next to it.
 */
export function testConfig(opts: ProxyOptions): object {
  const config = YAML.parse(readFileSync("config.yaml", "utf8")) as {
    model_list: {
      model_name: string;
      litellm_params: Record<string, unknown>;
      model_info?: Record<string, unknown>;
    }[];
    litellm_settings: Record<string, unknown>;
  };
  const model_list = demoModels(config.model_list, opts.upstream);
  const settings: Record<string, unknown> = {
    drop_params: true,
    cache: true,
    cache_params: {
      type: "redis",
      host: "127.0.0.1",
      port: 6379,
      ttl: 600,
      namespace: opts.redisNamespace ?? `e2e-${Date.now()}-${Math.random().toString(36).slice(2)}`,
    },
  };
  if (opts.callbacks === "ours") settings.callbacks = "lago_billing.proxy_handler_instance";
  if (opts.entitlements) {
    settings.callbacks = [
      ...(opts.callbacks === "ours" ? ["lago_billing.proxy_handler_instance"] : []),
      ...(opts.callbacks === "lago" ? ["lago"] : []),
      "lago_entitlements.proxy_handler_instance",
    ];
  }
  if (opts.callbacks === "lago") settings.callbacks = ["lago"];
  return {
    model_list,
    litellm_settings: settings,
    general_settings: { master_key: MASTER_KEY },
  };
}

/** Starts the real LiteLLM proxy from the project's virtualenv on a free port. */
export async function startProxy(opts: ProxyOptions): Promise<LiteLLMProxy> {
  const dir = mkdtempSync(join(tmpdir(), "litellm-e2e-"));
  if (opts.realConfig) copyFileSync("config.yaml", join(dir, "config.yaml"));
  else writeFileSync(join(dir, "config.yaml"), YAML.stringify(testConfig(opts)));
  copyFileSync("proxy/lago_billing.py", join(dir, "lago_billing.py"));
  copyFileSync("proxy/lago_entitlements.py", join(dir, "lago_entitlements.py"));
  const port = await freePort();
  const child = spawn(
    LITELLM_BIN,
    [
      "--config",
      join(dir, "config.yaml"),
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "--num_workers",
      "1",
    ],
    {
      cwd: dir,
      env: {
        PATH: process.env.PATH ?? "",
        HOME: process.env.HOME ?? dir,
        LITELLM_LOCAL_MODEL_COST_MAP: "True",
        LITELLM_TELEMETRY: "False",
        LITELLM_LOG: "ERROR",
        DISABLE_SCHEMA_UPDATE: "true",
        WEBHOOK_SERVICE_URL: opts.webhookUrl ?? "http://127.0.0.1:9",
        WEBHOOK_SECRET: opts.webhookSecret ?? "",
        LAGO_BILLING_FLUSH_INTERVAL: "0.2",
        LAGO_BILLING_SPOOL_PATH: join(dir, "spool.ndjson"),
        LAGO_BILLING_MAX_BACKOFF: "1",
        ...(opts.lagoUrl
          ? {
              LAGO_API_BASE: opts.lagoUrl,
              LAGO_API_KEY: opts.lagoApiKey ?? "",
              LAGO_API_EVENT_CODE: "llm_tokens",
              LAGO_API_CHARGE_BY: "end_user_id",
            }
          : {}),
        ...(opts.entitlements
          ? {
              LAGO_ENTITLEMENTS_REDIS_URL: opts.entitlements.redisUrl,
              LAGO_ENTITLEMENTS_REDIS_PREFIX: opts.entitlements.prefix,
              LAGO_ENTITLEMENTS_FAIL_MODE: opts.entitlements.failMode ?? "open",
              LAGO_ENTITLEMENTS_POLL_INTERVAL: String(opts.entitlements.pollInterval ?? 0.25),
            }
          : {}),
        ...opts.env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let out = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  const url = `http://127.0.0.1:${port}`;
  const exited = once(child, "exit").then(() => {
    throw new Error(`the proxy exited with code ${child.exitCode}`);
  });
  try {
    await Promise.race([waitHealthy(`${url}/health/liveliness`, 120_000), exited]);
  } catch (err) {
    child.kill("SIGKILL");
    throw new Error(`LiteLLM did not start: ${(err as Error).message}\n${out.slice(-3000)}`);
  }
  return {
    url,
    dir,
    child,
    output: () => out,
    async stop(signal: NodeJS.Signals = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
        const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
        await once(child, "exit").catch(() => undefined);
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
