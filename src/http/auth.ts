import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyReply, FastifyRequest } from "fastify";

const digest = (s: string) => createHash("sha256").update(s).digest();

/**
 * A preHandler-style hook requiring `Authorization: Bearer <secret>`. Both sides are hashed first so
 * the comparison is constant-time whatever the lengths.
 */
export function bearerAuth(secret: string | undefined) {
  const expected = secret === undefined ? null : digest(secret);
  return async (req: FastifyRequest, reply: FastifyReply) => {
    if (expected === null) return; // development without WEBHOOK_SECRET (refused in production)
    const header = req.headers.authorization ?? "";
    const match = /^Bearer\s+(.+)$/i.exec(header);
    if (!match || !timingSafeEqual(digest(match[1] as string), expected)) {
      reply.header("www-authenticate", 'Bearer realm="webhook-service"');
      return reply.code(401).send({
        statusCode: 401,
        error: "Unauthorized",
        message: "missing or wrong bearer token: send Authorization: Bearer <WEBHOOK_SECRET>",
      });
    }
  };
}
