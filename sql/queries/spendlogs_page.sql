-- One page of LiteLLM_SpendLogs in ("startTime", request_id) order, for [$1, $2) in UTC.
-- "startTime" is a timestamp without time zone holding UTC (LiteLLM writes it so), so the bounds are
-- passed as UTC wall-clock text and the ("startTime", request_id) index serves the scan.
-- Keyset pagination: $3 is the request_id of the last row of the previous page (NULL on the first
-- page), $1 then that row's "startTime". $4: page size.
-- Only the billing columns and the metadata keys the mapping reads: never messages, response or
-- proxy_server_request (prompts and completions).
SELECT request_id,
       call_type,
       api_key,
       spend,
       prompt_tokens,
       completion_tokens,
       total_tokens,
       extract(epoch FROM "startTime")::float8 AS start_epoch,
       to_char("startTime", 'YYYY-MM-DD"T"HH24:MI:SS.US') AS start_key,
       model,
       model_id,
       model_group,
       custom_llm_provider,
       "user",
       team_id,
       end_user,
       cache_hit,
       request_tags,
       metadata ->> 'status' AS meta_status,
       metadata ->> 'user_api_key_alias' AS key_alias,
       metadata ->> 'user_api_key_user_id' AS key_user_id,
       metadata ->> 'user_api_key_team_id' AS key_team_id,
       metadata ->> 'user_api_key_org_id' AS key_org_id,
       metadata ->> 'litellm_call_id' AS litellm_call_id,
       metadata -> 'usage_object' AS usage_object
FROM "LiteLLM_SpendLogs"
WHERE "startTime" >= $1::timestamp
  AND "startTime" < $2::timestamp
  AND ($3::text IS NULL OR "startTime" > $1::timestamp OR request_id > $3::text)
ORDER BY "startTime", request_id
LIMIT $4::int
