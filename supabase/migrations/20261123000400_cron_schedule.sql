-- pg_cron calls the orchestrator every minute: the safety net that picks up
-- retries and recovers expired leases when no start-workflow kick arrives.
-- The URL and credential come from Vault, under these names:
--   supaflow_orchestrator_url  e.g. https://<api-id>.execute-api.<region>.amazonaws.com/internal/orchestrator
--   supaflow_internal_token    the InternalToken parameter of template.yaml
-- On hosted Supabase this uses pg_net and Vault as they are.

do $$
begin
  if exists (select 1 from pg_available_extensions where name = 'pg_net') then
    create extension if not exists pg_net;
  end if;
end
$$;
create extension if not exists pg_cron;

-- Asks for an orchestrator pass (p_reason: cron, or 'job started' for a kick). net.http_post sends it once the
-- calling transaction has committed.
create or replace function workflow.call_orchestrator(p_reason text default 'cron') returns bigint
language sql
security definer
set search_path = ''
as $$
  select net.http_post(
    url := (select decrypted_secret from vault.decrypted_secrets
            where name = 'supaflow_orchestrator_url'),
    body := jsonb_build_object('reason', p_reason),
    headers := jsonb_build_object(
      'Content-Type', 'application/json',
      'Authorization', 'Bearer ' || (select decrypted_secret from vault.decrypted_secrets
                                     where name = 'supaflow_internal_token')),
    timeout_milliseconds := 2000)
$$;

select cron.schedule('supaflow-orchestrator', '* * * * *',
                     'select workflow.call_orchestrator()');
