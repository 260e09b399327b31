import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "typebox";
import { reprocess } from "../../operations/reprocess.ts";
import { collectStats } from "../../operations/stats.ts";
import { validateLago } from "../../operations/validate.ts";
import type { Service } from "../../service.ts";

const ReprocessBody = Type.Object(
  {
    states: Type.Optional(
      Type.Array(Type.Union([Type.Literal("failed"), Type.Literal("unbillable")]), {
        minItems: 1,
        uniqueItems: true,
      }),
    ),
    from: Type.Optional(Type.String({ description: "call time lower bound (ISO 8601), inclusive" })),
    to: Type.Optional(Type.String({ description: "call time upper bound (ISO 8601), exclusive" })),
    customer_id: Type.Optional(Type.String({ maxLength: 256 })),
    ids: Type.Optional(
      Type.Array(Type.String({ maxLength: 300 }), {
        maxItems: 10_000,
        description: "request or transaction ids",
      }),
    ),
    dry_run: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

function parseTime(v: string | undefined, field: string): Date | undefined {
  if (v === undefined) return undefined;
  const d = new Date(v);
  if (Number.isNaN(d.getTime()))
    throw Object.assign(new Error(`${field} is not a valid ISO 8601 time`), { statusCode: 422 });
  return d;
}

/** POST /webhooks/reprocess, GET /webhooks/stats, GET /webhooks/validate. */
export const operationRoutes: FastifyPluginAsyncTypebox<{ service: Service }> = async (app, { service }) => {
  app.post(
    "/reprocess",
    {
      schema: {
        summary: "Move failed and/or unbillable events back to pending",
        body: Type.Optional(ReprocessBody),
      },
    },
    async (req) => {
      const body = req.body ?? {};
      const result = await reprocess(service.sql, service.settings.lago, {
        states: body.states ?? ["failed", "unbillable"],
        from: parseTime(body.from, "from"),
        to: parseTime(body.to, "to"),
        customerId: body.customer_id,
        ids: body.ids,
        dryRun: body.dry_run ?? false,
      });
      if (!result.dry_run && result.moved > 0) {
        req.log.info({ moved: result.moved }, "events reprocessed");
        service.worker?.wake();
        await service.sql`SELECT pg_notify('lago_events', '')`;
      }
      return result;
    },
  );

  app.get("/stats", { schema: { summary: "Processing statistics" } }, async () => collectStats(service));

  app.get(
    "/validate",
    { schema: { summary: "Check the Lago connection, key and billable metric" } },
    async (_req, reply) => {
      const result = await validateLago(service);
      return reply.code(result.ok ? 200 : 503).send(result);
    },
  );
};
