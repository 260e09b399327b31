import { randomUUID } from "node:crypto";

/** A StandardLoggingPayload shaped as LiteLLM builds it (litellm/types/utils.py), with overrides. */
export function litellmPayload(
  over: Record<string, unknown> = {},
  meta: Record<string, unknown> = {},
): Record<string, unknown> {
  const start = Date.now() / 1000 - 2;
  return {
    id: `chatcmpl-${randomUUID()}`,
    litellm_call_id: randomUUID(),
    trace_id: randomUUID(),
    call_type: "acompletion",
    stream: false,
    status: "success",
    response_cost: 0.00046,
    cost_breakdown: { input_cost: 0.00006, output_cost: 0.0004, total_cost: 0.00046 },
    prompt_tokens: 12,
    completion_tokens: 8,
    total_tokens: 20,
    startTime: start,
    endTime: start + 0.4,
    completionStartTime: start + 0.4,
    response_time: 0.4,
    model: "gpt-4o",
    model_group: "gpt-4o",
    model_id: "abc",
    custom_llm_provider: "openai",
    api_base: "https://api.openai.com/v1",
    end_user: "customer-123",
    cache_hit: null,
    request_tags: [],
    messages: [{ role: "user", content: "secret prompt" }],
    response: { choices: [{ message: { content: "secret answer" } }] },
    error_str: null,
    metadata: {
      user_api_key_hash: "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
      user_api_key_alias: null,
      user_api_key_user_id: "user-789",
      user_api_key_team_id: "team-456",
      user_api_key_org_id: null,
      user_api_key_end_user_id: null,
      usage_object: {
        completion_tokens: 8,
        prompt_tokens: 12,
        total_tokens: 20,
        completion_tokens_details: { reasoning_tokens: 0 },
        prompt_tokens_details: { cached_tokens: 0 },
      },
      ...meta,
    },
    ...over,
  };
}
