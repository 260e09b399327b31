import { InvalidArgumentError } from "commander";
import { createLogger } from "./logger.ts";
import { createService, type Service } from "./service.ts";
import { loadSettings, type Settings, SettingsError } from "./settings.ts";

/** The settings, or exit 2 with the variable to fix. */
export function settingsOrExit(): Settings {
  try {
    return loadSettings();
  } catch (err) {
    if (err instanceof SettingsError) {
      process.stderr.write(`webhook-service: configuration error: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}

/** Commander parser for --since/--until style options. */
export function isoTime(v: string): Date {
  const d = new Date(v);
  if (Number.isNaN(d.getTime()))
    throw new InvalidArgumentError("must be an ISO 8601 time, e.g. 2026-11-01T00:00:00Z");
  return d;
}

/** Runs fn with a service for one command (no delivery worker) and closes it after. */
export function withService<T>(fn: (service: Service) => Promise<T>): Promise<T> {
  const settings = settingsOrExit();
  const log = createLogger(process.env.LOG_LEVEL ?? "warn");
  const service = createService(settings, log, { worker: false });
  return fn(service).finally(() => service.close());
}
