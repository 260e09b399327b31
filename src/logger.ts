import { type Logger, pino } from "pino";

/** JSON logs on stdout; secrets are redacted wherever they could appear. */
export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: "webhook-service" },
    redact: {
      paths: [
        "req.headers.authorization",
        "headers.authorization",
        "*.apiKey",
        "*.webhookSecret",
        "*.password",
        "settings.lago.apiKey",
        "settings.webhookSecret",
      ],
      censor: "[redacted]",
    },
  });
}
