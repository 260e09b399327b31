import swagger from "@fastify/swagger";
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from "fastify";
import { statusClass } from "../metrics.ts";
import type { Service } from "../service.ts";
import { bearerAuth } from "./auth.ts";
import { installErrorHandler } from "./errors.ts";
import { driftRoutes } from "./routes/drift.ts";
import { entitlementRoutes } from "./routes/entitlements.ts";
import { healthRoutes } from "./routes/health.ts";
import { ingestRoutes } from "./routes/ingest.ts";
import { lagoWebhookRoutes } from "./routes/lago-webhooks.ts";
import { litellmRoutes } from "./routes/litellm.ts";
import { operationRoutes } from "./routes/operations.ts";

/** Builds the HTTP app (not listening), so tests can use inject() or listen on port 0. */
export async function buildApp(service: Service): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: service.log.child({ component: "http" }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: service.settings.ingest.bodyLimitBytes,
    ajv: {
      customOptions: { allErrors: true, coerceTypes: false, removeAdditional: false, useDefaults: false },
    },
  });
  installErrorHandler(
    app,
    () => service.metrics.databaseErrors.inc({ where: "ingest" }),
    service.settings.ingest.bodyLimitBytes,
  );
  // JSON only (NDJSON too on /webhooks/litellm): Fastify's default text/plain parser would hand a
  // string to the schema and answer 422 where the content type is what is wrong (415).
  app.removeContentTypeParser("text/plain");
  app.addHook("onResponse", async (req, reply) => {
    service.metrics.httpSeconds.observe(
      { route: req.routeOptions.url ?? "unknown", status_class: statusClass(reply.statusCode) },
      reply.elapsedTime / 1000,
    );
  });
  await app.register(swagger, {
    openapi: {
      info: { title: "webhook-service", version: "0.1.0", description: "Usage ledger and Lago delivery" },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
      security: [{ bearer: [] }],
    },
  });
  await app.register(healthRoutes, { service });
  await app.register(
    async (webhooks) => {
      webhooks.addHook("onRequest", bearerAuth(service.settings.webhookSecret));
      await webhooks.register(ingestRoutes, { service });
      await webhooks.register(litellmRoutes, { service });
      await webhooks.register(operationRoutes, { service });
      await webhooks.register(driftRoutes, { service });
      await webhooks.register(entitlementRoutes, { service });
    },
    { prefix: "/webhooks" },
  );
  // Lago's webhooks carry a signature, not our bearer secret (src/entitlements/intake.ts).
  await app.register(lagoWebhookRoutes, { service, prefix: "/webhooks" });
  app.get("/openapi.json", { schema: { hide: true } }, async () => app.swagger());
  return app;
}
