-- Every grant of the schema, in one place, applied after everything it names exists.
--
-- Users read their own rows directly (PostgREST, supabase-js, Realtime) under RLS;
-- they write only through the HTTP functions, which call the SQL below as the
-- service role with the user they verified. So no function of this schema is
-- executable by anon or authenticated. Postgres grants EXECUTE to PUBLIC on every
-- new function (a per-schema default cannot take that back): a migration that adds
-- functions must end by running this file's function lines again;
-- tests/test_trust_boundary.py sweeps the schema for any function left over.

grant usage on schema workflow to anon, authenticated, service_role;

revoke all on all tables in schema workflow from anon, authenticated;
grant select on workflow.workflows, workflow.workflow_versions, workflow.workflow_drafts,
  workflow.transformers, workflow.jobs, workflow.job_steps, workflow.job_events
  to authenticated;
grant all on all tables in schema workflow to service_role;
grant usage, select on all sequences in schema workflow to service_role;

revoke execute on all functions in schema workflow from public, anon, authenticated;
grant execute on all functions in schema workflow to service_role;
-- The RLS policies call these as the reading user; they only read the caller's claims.
grant execute on function workflow.claims_service(jsonb), workflow.claims_tenant(jsonb),
  workflow.claims_admin(jsonb), workflow.claims_manage(jsonb, text),
  workflow.claims_reach(jsonb, text)
  to authenticated;
-- pg_cron runs call_orchestrator as the database owner; nobody else needs it.
revoke execute on function workflow.call_orchestrator(text) from service_role;
