import type { FastifyPluginAsync } from "fastify";
import type { Service } from "../../service.ts";

/** Lago's webhook bodies are one serialized object (a subscription with its plan is the largest). */
const BODY_LIMIT = 1024 * 1024;

/**
 * POST /webhooks/lago: Lago's outbound webhooks. Not behind the bearer secret (Lago cannot send
 * one): each request is authenticated by its signature instead, over the raw body, so the body is
 * kept as bytes here and parsed only once verified.
 */
export const lagoWebhookRoutes: FastifyPluginAsync<{ service: Service }> = async (app, { service }) => {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", { parseAs: "buffer", bodyLimit: BODY_LIMIT }, (_req, body, done) =>
    done(null, body),
  );
  app.post(
    "/lago",
    {
      bodyLimit: BODY_LIMIT,
      schema: {
        summary:
          "Lago's outbound webhooks (wallets, wallet transactions, subscriptions, alerts), verified by " +
          "X-Lago-Signature (HMAC or RS256 JWT), stored once per X-Lago-Unique-Key",
        security: [],
      },
    },
    async (req, reply) => {
      const raw = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      const r = await service.entitlements.intake.receive(raw, req.headers);
      return reply.code(r.status).send(r.body);
    },
  );
};
