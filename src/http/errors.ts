import { STATUS_CODES } from "node:http";
import type { FastifyError, FastifyInstance } from "fastify";
import { isDatabaseUnavailable } from "../db/pool.ts";
import type { FieldError } from "../ingest/usage-api.ts";

/** Turns ajv's instancePath ("/events/3/tokens_input") into a field error with the batch index. */
export function toFieldErrors(
  validation: { instancePath?: string; message?: string; params?: Record<string, unknown> }[],
): FieldError[] {
  return validation.map((v) => {
    let path = v.instancePath || "/";
    const extra = v.params?.additionalProperty ?? v.params?.missingProperty;
    if (typeof extra === "string") path = `${path === "/" ? "" : path}/${extra}`;
    const m = /^\/events\/(\d+)(\/|$)/.exec(path);
    const message =
      v.params?.additionalProperty !== undefined ? "is not a known field" : (v.message ?? "is invalid");
    return m ? { index: Number(m[1]), path, message } : { path, message };
  });
}

/** Sends 422 with per-field (and per-index) reasons. */
export function unprocessable(errors: FieldError[]) {
  return {
    statusCode: 422,
    error: "Unprocessable Entity",
    message: `${errors.length} invalid field(s); nothing was stored`,
    errors,
  };
}

/**
 * Fastify's own request errors, in the service's words: what was wrong and what to do, never an
 * internal FST_ERR_* code. `bodyLimit` is INGEST_BODY_LIMIT_BYTES, named in the 413.
 */
function requestError(
  err: FastifyError,
  bodyLimit: number,
): { statusCode: number; error: string; message: string } | null {
  switch (err.code) {
    case "FST_ERR_CTP_INVALID_JSON_BODY":
      return {
        statusCode: 400,
        error: "Bad Request",
        message: "the body is not valid JSON; nothing was stored",
      };
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return { statusCode: 400, error: "Bad Request", message: "the body is empty; send a JSON document" };
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return {
        statusCode: 413,
        error: "Payload Too Large",
        message:
          `the body is larger than ${bodyLimit} bytes (INGEST_BODY_LIMIT_BYTES); nothing was stored: ` +
          "send smaller batches, or raise INGEST_BODY_LIMIT_BYTES",
      };
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return {
        statusCode: 415,
        error: "Unsupported Media Type",
        message:
          "send the body as JSON with Content-Type: application/json (POST /webhooks/litellm also takes application/x-ndjson)",
      };
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return { statusCode: 400, error: "Bad Request", message: "Content-Length does not match the body" };
    default:
      return null;
  }
}

/**
 * Validation errors become 422 with field paths; an unreachable database 503 with Retry-After (the
 * sender must retry); Fastify's request errors get the service's shape; other client errors pass
 * through; anything else is logged and masked as 500.
 */
export function installErrorHandler(
  app: FastifyInstance,
  onDatabaseError: () => void = () => {},
  bodyLimit: number = app.initialConfig.bodyLimit ?? 1_048_576,
): void {
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const known = requestError(err, bodyLimit);
    if (known) return reply.code(known.statusCode).send(known);
    if (err.validation) {
      return reply.code(422).send(unprocessable(toFieldErrors(err.validation)));
    }
    if (isDatabaseUnavailable(err) || (err as { severity?: string }).severity !== undefined)
      onDatabaseError();
    if (isDatabaseUnavailable(err)) {
      req.log.warn({ err: err.message }, "database unavailable: answering 503");
      return reply.code(503).header("retry-after", "5").send({
        statusCode: 503,
        error: "Service Unavailable",
        message: "database unavailable; nothing was stored, retry later",
      });
    }
    const status = err.statusCode ?? 500;
    if (status < 500) {
      return reply
        .code(status)
        .send({ statusCode: status, error: STATUS_CODES[status] ?? "Bad Request", message: err.message });
    }
    req.log.error({ err }, "unhandled error");
    return reply.code(500).send({
      statusCode: 500,
      error: "Internal Server Error",
      message: "internal error (see the service log)",
    });
  });
}
