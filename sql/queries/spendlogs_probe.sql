-- Is there a LiteLLM_SpendLogs table here (a LiteLLM database), and which of the columns the reader
-- needs does it lack? Always one row; `present` is false when the table does not exist.
SELECT current_database() AS database,
       to_regclass('"LiteLLM_SpendLogs"') IS NOT NULL AS present,
       ARRAY(
         SELECT c FROM unnest($1::text[]) AS c
         WHERE NOT EXISTS (
           SELECT 1 FROM pg_attribute a
           WHERE a.attrelid = to_regclass('"LiteLLM_SpendLogs"') AND a.attname = c
             AND a.attnum > 0 AND NOT a.attisdropped)
       ) AS missing
