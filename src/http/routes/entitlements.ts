import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "typebox";
import { listEntitlements, showEntitlement } from "../../entitlements/view.ts";
import type { Service } from "../../service.ts";

const EntitlementsQuery = Type.Object(
  {
    customer_id: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
    state: Type.Optional(Type.Union([Type.Literal("allowed"), Type.Literal("blocked")])),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000 })),
  },
  { additionalProperties: false },
);

/** GET /webhooks/entitlements[?customer_id=]: who is blocked and why (one customer: every input). */
export const entitlementRoutes: FastifyPluginAsyncTypebox<{ service: Service }> = async (
  app,
  { service },
) => {
  app.get(
    "/entitlements",
    {
      schema: {
        summary:
          "Entitlements: every tracked customer (blocked first), or one customer's decision with its " +
          "inputs, wallets, subscriptions, history and recent Lago webhooks",
        querystring: EntitlementsQuery,
      },
    },
    async (req, reply) => {
      if (req.query.customer_id !== undefined) {
        const one = await showEntitlement(service, req.query.customer_id);
        if (!one) {
          return reply.code(404).send({
            statusCode: 404,
            error: "Not Found",
            message: `customer ${req.query.customer_id} is not tracked: it has no usage in the ledger and no Lago webhook named it`,
          });
        }
        return one;
      }
      return listEntitlements(service, { state: req.query.state, limit: req.query.limit });
    },
  );
};
