-- Managing workflows, transformers and jobs (the admin API, DESIGN.md section 10).
-- Each function is called by the service role with the caller's verified claims
-- (p_claims) and decides what they may do with the claims_* functions, so the HTTP
-- API, RLS and SQL callers follow one set of rules. A refusal writes nothing.

-- The steps of p_definition whose transformer p_tenant's workflows may not use (unknown,
-- or another tenant's), as one message; null when there are none.
create or replace function workflow.unknown_transformers(p_definition jsonb, p_tenant text)
returns text
language sql
stable
set search_path = ''
as $$
  select 'unknown transformer(s): ' || string_agg(
           format('steps.%s.transformer: step %s uses %s', n - 1, to_jsonb(e ->> 'id'),
                  to_jsonb(e ->> 'transformer')), '; ' order by n)
  from jsonb_array_elements(p_definition -> 'steps') with ordinality as x(e, n)
  where not exists (
    select 1 from workflow.transformers t
    where t.id = e ->> 'transformer' and (t.tenant_id is null or t.tenant_id = p_tenant))
$$;

-- Refuses a caller who is not an admin (403).
create or replace function workflow.require_admin(p_claims jsonb) returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
  if not workflow.claims_admin(p_claims) then
    raise sqlstate 'PT403' using detail = 'forbidden',
      message = 'this needs an admin (the service-role key, or app_metadata.supaflow_role "admin")';
  end if;
end
$$;

-- Refuses a caller who may not administer objects of p_tenant: a non-admin (403), or
-- an admin of another tenant, to whom the object does not exist (404).
create or replace function workflow.require_manage(
  p_claims jsonb, p_tenant text, p_what text
) returns void
language plpgsql
stable
set search_path = ''
as $$
begin
  perform workflow.require_admin(p_claims);
  if not workflow.claims_manage(p_claims, p_tenant) then
    raise sqlstate 'PT404' using message = p_what || ' not found';
  end if;
end
$$;

-- The tenant an admin's new object belongs to: the service role chooses (p_tenant, null
-- for global); a user admin's objects are their tenant's, and naming another is refused.
create or replace function workflow.owning_tenant(p_claims jsonb, p_tenant text) returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_own text := workflow.claims_tenant(p_claims);
begin
  if workflow.claims_service(p_claims) then
    return p_tenant;
  end if;
  if p_tenant is not null and p_tenant is distinct from v_own then
    raise sqlstate 'PT403' using detail = 'forbidden',
      message = 'tenant_id: you administer only your own tenant''s objects';
  end if;
  return v_own;
end
$$;

-- The tenant of an existing workflow or transformer (p_existing; p_exists false for a new
-- one), checked: the caller must administer it (else 404), and it never changes tenant
-- (409). For a new one, the tenant the caller may give it (owning_tenant).
create or replace function workflow.kept_tenant(
  p_claims jsonb, p_what text, p_exists boolean, p_existing text, p_requested text
) returns text
language plpgsql
stable
set search_path = ''
as $$
begin
  if not p_exists then
    return workflow.owning_tenant(p_claims, p_requested);
  end if;
  perform workflow.require_manage(p_claims, p_existing, p_what);
  if p_requested is not null and p_requested is distinct from p_existing then
    raise sqlstate 'PT409' using detail = 'tenant_conflict', message = format(
      '%s belongs to tenant %s, and never changes tenant', p_what,
      coalesce(to_jsonb(p_existing), '"(global)"'));
  end if;
  return p_existing;
end
$$;

-- Refuses an id the domain workflow.object_id would refuse, with a message naming it.
create or replace function workflow.check_object_id(p_id text, p_what text) returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
  perform p_id::workflow.object_id;
exception when check_violation then
  raise sqlstate 'PT400' using detail = 'bad_request', message = format(
    '%s %s must be 1-128 letters, digits, "_", "." or "-", starting with a letter or digit',
    p_what, to_jsonb(left(p_id, 140)));
end
$$;

-- Serialises every change of one workflow (or transformer): p_kind and p_id name it.
-- Held to commit, so a PUT, a publish and a delete of one id take turns, also before
-- any of its rows exist (two first PUTs of one id by two tenants).
create or replace function workflow.lock_object(p_kind text, p_id text) returns void
language sql
set search_path = ''
as $$
  select pg_advisory_xact_lock(hashtextextended('supaflow: ' || p_kind || ' ' || p_id, 0))
$$;

-- PUT /workflows/{id}: creates or replaces the workflow's draft. p_definition is in
-- normalised form (the trigger refuses any other); its transformers must exist for
-- the workflow's tenant (PT422). A published workflow keeps its tenant.
create or replace function workflow.put_draft(
  p_workflow_id text, p_description text, p_definition jsonb, p_tenant_id text,
  p_claims jsonb
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_tenant text;
  v_published workflow.workflows;
  v_draft workflow.workflow_drafts;
  v_problem text;
begin
  perform workflow.require_admin(p_claims);
  perform workflow.check_object_id(p_workflow_id, 'workflow id');
  perform workflow.lock_object('workflow', p_workflow_id);
  select * into v_published from workflow.workflows where id = p_workflow_id;
  select * into v_draft from workflow.workflow_drafts where workflow_id = p_workflow_id;
  v_tenant := workflow.kept_tenant(
    p_claims, format('workflow %s', to_jsonb(p_workflow_id)),
    v_published.id is not null or v_draft.workflow_id is not null,
    coalesce(v_published.tenant_id, v_draft.tenant_id), p_tenant_id);
  v_problem := workflow.unknown_transformers(p_definition, v_tenant);
  if v_problem is not null then
    raise sqlstate 'PT422' using detail = 'unknown_transformer', message = v_problem;
  end if;
  insert into workflow.workflow_drafts as d
    (workflow_id, tenant_id, description, definition, updated_by, updated_at)
  values (p_workflow_id, v_tenant, p_description, p_definition,
          workflow.claims_actor(p_claims), now())
  on conflict (workflow_id) do update set
    description = excluded.description, definition = excluded.definition,
    revision = d.revision + 1, updated_by = excluded.updated_by, updated_at = now()
  returning * into v_draft;
  return jsonb_build_object(
    'workflow_id', p_workflow_id, 'tenant_id', v_tenant, 'version', v_published.version,
    'draft', jsonb_build_object('revision', v_draft.revision,
                                'description', v_draft.description,
                                'definition', v_draft.definition,
                                'updated_by', v_draft.updated_by,
                                'updated_at', v_draft.updated_at));
end
$$;

-- POST /workflows/{id}/publish: the draft becomes the next version, and the workflow
-- active. p_expected_version (the version the caller saw; 0 for none yet) makes a
-- publish that raced another fail (PT409) instead of overwriting it. Jobs already
-- running keep the version they started with. An unchanged definition is no new version.
-- p_draft_revision (the draft revision the caller saw) makes publishing a draft someone
-- changed since fail (PT409) instead of publishing what the caller never saw.
create or replace function workflow.publish_workflow(
  p_workflow_id text, p_expected_version integer, p_claims jsonb,
  p_draft_revision integer default null
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_draft workflow.workflow_drafts;
  v_before integer;
  v_after integer;
  v_problem text;
begin
  perform workflow.lock_object('workflow', p_workflow_id);
  select * into v_draft from workflow.workflow_drafts where workflow_id = p_workflow_id;
  select version into v_before from workflow.workflows where id = p_workflow_id;
  if v_draft.workflow_id is null then
    if v_before is null then
      perform workflow.require_admin(p_claims);
      raise sqlstate 'PT404' using message = format('workflow %s not found',
                                                    to_jsonb(p_workflow_id));
    end if;
    perform workflow.require_manage(
      p_claims, (select tenant_id from workflow.workflows where id = p_workflow_id),
      format('workflow %s', to_jsonb(p_workflow_id)));
    raise sqlstate 'PT409' using detail = 'no_draft', hint = v_before::text, message = format(
      'workflow %s has no draft to publish (PUT one first)', to_jsonb(p_workflow_id));
  end if;
  perform workflow.require_manage(p_claims, v_draft.tenant_id,
                                  format('workflow %s', to_jsonb(p_workflow_id)));
  if p_expected_version is not null and p_expected_version <> coalesce(v_before, 0) then
    raise sqlstate 'PT409' using detail = 'version_conflict', hint = coalesce(v_before, 0)::text,
      message = format('workflow %s is at version %s, not %s: someone published since',
                       to_jsonb(p_workflow_id), coalesce(v_before, 0), p_expected_version);
  end if;
  if p_draft_revision is not null and p_draft_revision <> v_draft.revision then
    raise sqlstate 'PT409' using detail = 'draft_changed', hint = v_draft.revision::text,
      message = format('the draft of workflow %s is at revision %s, not %s: someone changed it',
                       to_jsonb(p_workflow_id), v_draft.revision, p_draft_revision);
  end if;
  v_problem := workflow.unknown_transformers(v_draft.definition, v_draft.tenant_id);
  if v_problem is not null then
    raise sqlstate 'PT422' using detail = 'unknown_transformer', message = v_problem;
  end if;
  if v_before is null then
    insert into workflow.workflows (id, tenant_id, description, definition)
    values (p_workflow_id, v_draft.tenant_id, v_draft.description, v_draft.definition)
    returning version into v_after;
  else
    update workflow.workflows
    set description = v_draft.description, definition = v_draft.definition, is_active = true
    where id = p_workflow_id
    returning version into v_after;
  end if;
  if v_after is distinct from v_before then
    update workflow.workflow_versions set published_by = workflow.claims_actor(p_claims)
    where workflow_id = p_workflow_id and version = v_after;
  end if;
  delete from workflow.workflow_drafts where workflow_id = p_workflow_id;
  return jsonb_build_object('workflow_id', p_workflow_id, 'version', v_after,
                            'new_version', v_after is distinct from v_before);
end
$$;

-- DELETE /workflows/{id}: no new starts (they get 404); running jobs finish, and a
-- publish makes it active again.
create or replace function workflow.deactivate_workflow(p_workflow_id text, p_claims jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_workflow workflow.workflows;
begin
  perform workflow.lock_object('workflow', p_workflow_id);
  select * into v_workflow from workflow.workflows where id = p_workflow_id;
  perform workflow.require_manage(p_claims, v_workflow.tenant_id,
                                  format('workflow %s', to_jsonb(p_workflow_id)));
  if v_workflow.id is null then
    raise sqlstate 'PT404' using message = format('workflow %s not found', to_jsonb(p_workflow_id));
  end if;
  update workflow.workflows set is_active = false where id = p_workflow_id and is_active;
  return jsonb_build_object('workflow_id', p_workflow_id, 'version', v_workflow.version,
                            'active', false);
end
$$;

-- PUT /transformers/{id}: creates or replaces a transformer. The caller validated
-- p_config with its type's model and chose the executor function; a transformer keeps
-- its tenant. A changed config is read by the next claim of any step that uses it.
create or replace function workflow.put_transformer(
  p_transformer_id text, p_type text, p_description text, p_config jsonb,
  p_target_function text, p_tenant_id text, p_claims jsonb
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_existing workflow.transformers;
  v_tenant text;
  v_row workflow.transformers;
begin
  perform workflow.require_admin(p_claims);
  perform workflow.check_object_id(p_transformer_id, 'transformer id');
  perform workflow.lock_object('transformer', p_transformer_id);
  select * into v_existing from workflow.transformers where id = p_transformer_id;
  v_tenant := workflow.kept_tenant(
    p_claims, format('transformer %s', to_jsonb(p_transformer_id)), v_existing.id is not null,
    v_existing.tenant_id, p_tenant_id);
  insert into workflow.transformers as t
    (id, tenant_id, type, description, config, target_function)
  values (p_transformer_id, v_tenant, p_type, p_description, p_config, p_target_function)
  on conflict (id) do update set
    type = excluded.type, description = excluded.description, config = excluded.config,
    target_function = excluded.target_function
  returning * into v_row;
  return jsonb_build_object('transformer_id', v_row.id, 'tenant_id', v_row.tenant_id,
                            'type', v_row.type, 'description', v_row.description,
                            'config', v_row.config, 'target_function', v_row.target_function,
                            'created', v_existing.id is null, 'updated_at', v_row.updated_at);
end
$$;

-- GET /transformers: those the caller's workflows may use (global and their tenant's);
-- the config only of those they manage (a global one's may hold a webhook's headers).
create or replace function workflow.list_transformers(p_claims jsonb) returns jsonb
language plpgsql
stable
set search_path = ''
as $$
begin
  perform workflow.require_admin(p_claims);
  return coalesce((
    select jsonb_agg(jsonb_build_object(
             'transformer_id', t.id, 'tenant_id', t.tenant_id, 'type', t.type,
             'description', t.description,
             'config', case when workflow.claims_manage(p_claims, t.tenant_id) then t.config end,
             'target_function', t.target_function, 'updated_at', t.updated_at) order by t.id)
    from workflow.transformers t
    where workflow.claims_reach(p_claims, t.tenant_id)), '[]'::jsonb);
end
$$;

-- POST /jobs/{id}/retry: a failed or cancelled job runs again from its unfinished steps,
-- on the same version; completed steps keep their outputs and attempts, the others
-- start over (attempt 0), ready when their dependencies are complete. The job's move
-- back to pending (event job_pending) says who retried it and which steps run again.
create or replace function workflow.retry_job(p_job_id uuid, p_claims jsonb) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_job workflow.jobs;
  v_steps text[];
  v_status text;
begin
  select * into v_job from workflow.jobs where id = p_job_id for update;
  if not found or not workflow.claims_control(p_claims, v_job.user_id, v_job.tenant_id) then
    raise sqlstate 'PT404' using message = format('job %s not found', p_job_id);
  end if;
  if v_job.status not in ('failed', 'cancelled') then
    raise sqlstate 'PT409' using detail = 'not_retryable', message = format(
      'job %s is %s: only a failed or cancelled job can be retried', p_job_id, v_job.status);
  end if;
  with reset as (
    update workflow.job_steps s set
      status = case when exists (
          select 1 from workflow.job_steps d
          where d.job_id = s.job_id and d.step_id = any(s.depends_on) and d.status <> 'completed')
        then 'waiting' else 'ready' end,
      next_attempt_at = case when exists (
          select 1 from workflow.job_steps d
          where d.job_id = s.job_id and d.step_id = any(s.depends_on) and d.status <> 'completed')
        then null else now() end,
      attempt = 0, lease_token = null, lease_expires_at = null, output = null, error = null,
      started_at = null, completed_at = null
    where s.job_id = p_job_id and s.status <> 'completed'
    returning s.step_id
  )
  select array_agg(step_id order by step_id) into v_steps from reset;
  update workflow.jobs
  set error_message = null, retry_count = 0, next_retry_at = null, final_result = null
  where id = p_job_id;
  -- Every step complete (the job failed or was cancelled while finishing): running, so
  -- the orchestrator's sweep (finishable_jobs) finishes it again.
  v_status := case when v_steps is null then 'running' else 'pending' end;
  perform workflow.transition_job(p_job_id, v_status, jsonb_build_object(
    'retried_by', workflow.claims_actor(p_claims), 'steps', to_jsonb(coalesce(v_steps, '{}'))));
  return jsonb_build_object('job_id', p_job_id, 'status', v_status,
                            'retried_steps', to_jsonb(coalesce(v_steps, '{}')),
                            'kick', workflow.kick_needed());
end
$$;

-- GET /health: what a deployment's health depends on, nothing secret. p_migrations:
-- the migration versions the caller's code needs; the answer lists those not applied.
create or replace function workflow.health(p_migrations text[]) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_applied text[];
begin
  if to_regclass('supabase_migrations.schema_migrations') is not null then
    execute 'select array_agg(version) from supabase_migrations.schema_migrations'
      into v_applied;
  end if;
  return jsonb_build_object(
    'missing_migrations', to_jsonb(array(
      select m from unnest(p_migrations) m where not m = any(coalesce(v_applied, '{}')))),
    'last_pass_ended_at', (select ended_at from workflow.orchestrator_last_pass),
    'pass_alive', exists (select 1 from workflow.orchestrator_passes where alive_until > now()),
    'cron_scheduled', exists (select 1 from cron.job
                              where jobname = 'supaflow-orchestrator' and active),
    'now', now());
end
$$;

-- GET /workflows and GET /workflows/{id} (p_workflow_id): the workflows the caller may
-- start (active; global or their tenant's), each with what a form needs (description,
-- input_schema); to an admin also those they manage that are inactive or only a draft,
-- whether a draft waits, and for one workflow its definition, the draft's and every
-- version: who published it and when.
create or replace function workflow.describe_workflows(
  p_claims jsonb, p_workflow_id text default null
) returns jsonb
language sql
stable
set search_path = ''
as $$
  with ids as (
    select w.id, w.tenant_id from workflow.workflows w
    where (p_workflow_id is null or w.id = p_workflow_id)
    union
    select d.workflow_id, d.tenant_id from workflow.workflow_drafts d
    where (p_workflow_id is null or d.workflow_id = p_workflow_id)
      and not exists (select 1 from workflow.workflows w where w.id = d.workflow_id)
  )
  select coalesce(jsonb_agg(item order by item ->> 'workflow_id'), '[]'::jsonb)
  from (
    select jsonb_build_object(
             'workflow_id', ids.id, 'description', coalesce(w.description, d.description),
             'version', w.version, 'input_schema', w.definition -> 'input_schema')
           || case when workflow.claims_manage(p_claims, ids.tenant_id) then
                jsonb_build_object(
                  'tenant_id', ids.tenant_id, 'active', coalesce(w.is_active, false),
                  'updated_at', w.updated_at,
                  'draft', case when d.workflow_id is not null then jsonb_build_object(
                             'revision', d.revision, 'description', d.description,
                             'updated_by', d.updated_by, 'updated_at', d.updated_at) end)
                || case when p_workflow_id is not null then jsonb_build_object(
                     'definition', w.definition,
                     'draft', case when d.workflow_id is not null then jsonb_build_object(
                                'revision', d.revision, 'description', d.description,
                                'definition', d.definition,
                                'updated_by', d.updated_by, 'updated_at', d.updated_at) end,
                     'versions', (select coalesce(jsonb_agg(jsonb_build_object(
                                    'version', v.version, 'description', v.description,
                                    'published_by', v.published_by,
                                    'published_at', v.created_at) order by v.version desc),
                                  '[]'::jsonb)
                                  from workflow.workflow_versions v
                                  where v.workflow_id = ids.id)) else '{}'::jsonb end
              else '{}'::jsonb end as item
    from ids
    left join workflow.workflows w on w.id = ids.id
    left join workflow.workflow_drafts d on d.workflow_id = ids.id
    where workflow.claims_manage(p_claims, ids.tenant_id)
       or (w.is_active and workflow.claims_reach(p_claims, w.tenant_id))
  ) listed
$$;
