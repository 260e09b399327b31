import { createHmac, createPublicKey, type KeyObject, timingSafeEqual, verify } from "node:crypto";

/**
 * Verification of Lago's outbound webhooks. Lago signs each webhook in one of two ways, named by
 * X-Lago-Signature-Algorithm (app/models/webhook.rb#generate_headers):
 *   hmac: X-Lago-Signature = Base64.strict_encode64(OpenSSL::HMAC.digest("sha-256", organization.hmac_key,
 *         payload.to_json)) — over exactly the bytes of the body (LagoHttpClient posts body.to_json);
 *   jwt:  X-Lago-Signature = JWT.encode({data: payload.to_json, iss: LAGO_API_URL}, RsaPrivateKey, "RS256"),
 *         verified with the public key of GET /api/v1/webhooks/json_public_key.
 * Lago versions before signature_algo existed sent only the JWT header, so a missing algorithm is jwt.
 */
export type SignatureAlgorithm = "hmac" | "jwt";

export type Verification =
  | { ok: true; algorithm: SignatureAlgorithm }
  | { ok: false; algorithm: SignatureAlgorithm | null; reason: string };

/** Base64 HMAC-SHA256 of the body under the organization's HMAC key, compared in constant time. */
export function verifyHmac(body: Buffer, signature: string, key: string): boolean {
  const expected = createHmac("sha256", key).update(body).digest();
  let given: Buffer;
  try {
    given = Buffer.from(signature.trim(), "base64");
  } catch {
    return false;
  }
  return given.length === expected.length && timingSafeEqual(given, expected);
}

function base64url(part: string): Buffer {
  return Buffer.from(part.replace(/-/g, "+").replace(/_/g, "/"), "base64");
}

/**
 * An RS256 JWT whose `data` claim is the body itself. The header must say RS256 (never "none" or an
 * HMAC algorithm keyed with the public key); the signature is checked before anything is trusted.
 */
export function verifyJwt(
  body: Buffer,
  token: string,
  key: KeyObject,
): { ok: true } | { ok: false; reason: string } {
  const parts = token.trim().split(".");
  if (parts.length !== 3) return { ok: false, reason: "X-Lago-Signature is not a JWT" };
  const [h, p, s] = parts as [string, string, string];
  let header: { alg?: unknown };
  try {
    header = JSON.parse(base64url(h).toString("utf8")) as { alg?: unknown };
  } catch {
    return { ok: false, reason: "the JWT header is not JSON" };
  }
  if (header.alg !== "RS256")
    return { ok: false, reason: `JWT algorithm ${String(header.alg)} is not RS256` };
  if (!verify("RSA-SHA256", Buffer.from(`${h}.${p}`), key, base64url(s))) {
    return { ok: false, reason: "JWT signature does not verify with Lago's public key" };
  }
  let claims: { data?: unknown };
  try {
    claims = JSON.parse(base64url(p).toString("utf8")) as { data?: unknown };
  } catch {
    return { ok: false, reason: "the JWT payload is not JSON" };
  }
  if (typeof claims.data !== "string") return { ok: false, reason: "the JWT has no data claim" };
  // Lago signs payload.to_json and posts the same string: the body must be exactly what was signed.
  const signed = Buffer.from(claims.data, "utf8");
  if (signed.length !== body.length || !timingSafeEqual(signed, body)) {
    return { ok: false, reason: "the body is not the signed payload" };
  }
  return { ok: true };
}

/**
 * Lago's public key as configured or served: a PEM, or the base64 of a PEM (json_public_key answers
 * `{"webhook": {"public_key": Base64.encode64(RsaPublicKey.to_s)}}`,
 * app/controllers/api/v1/webhooks_controller.rb).
 */
export function parsePublicKey(text: string): KeyObject {
  const trimmed = text.trim();
  const pem = trimmed.includes("-----BEGIN")
    ? trimmed
    : Buffer.from(trimmed.replace(/\s+/g, ""), "base64").toString("utf8");
  if (!pem.includes("-----BEGIN")) {
    throw new Error("not a PEM public key, nor the base64 of one");
  }
  return createPublicKey(pem);
}

/** The algorithm named by X-Lago-Signature-Algorithm (absent: jwt, as Lago before 2023 sent). */
export function algorithmOf(header: string | undefined): SignatureAlgorithm | null {
  const v = (header ?? "jwt").trim().toLowerCase();
  return v === "hmac" || v === "jwt" ? v : null;
}
