-- The workflow engine's schema: definitions, jobs, their steps, and an
-- append-only event log. Users read their own jobs through RLS; every write to
-- engine state goes through the service role's SQL functions.

create schema if not exists workflow;

create or replace function workflow.touch_updated_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end
$$;

create or replace function workflow.touch_last_updated_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.last_updated_at := now();
  return new;
end
$$;

-- Definitions -----------------------------------------------------------------

-- Every JSON value the engine stores from outside (a job's input, a step's
-- output, a definition, a transformer's config) is bounded where it enters: at most 64 levels of nesting (a scalar is
-- 0, `{"a": 1}` is 1) and at most 1 MiB of JSON text as Postgres prints it.
-- Returns what is wrong, or null. `.**{64}` reaches the containers at level 64,
-- i.e. inside 64 others, and stops there: the check never walks deeper.
create or replace function workflow.value_problem(p_value jsonb) returns text
language sql
immutable
set search_path = ''
as $$
  select case
    when jsonb_path_exists(p_value,
           'strict $.**{64} ? (@.type() == "object" || @.type() == "array")')
      then 'nested more than 64 levels deep'
    when octet_length(p_value::text) > 1048576
      then format('%s bytes of JSON, over the 1 MiB (1048576-byte) cap',
                  octet_length(p_value::text))
  end
$$;

-- True when p_value is a JSON number in [p_lo, p_hi] (and whole, if p_integer).
create or replace function workflow.number_within(
  p_value jsonb, p_lo numeric, p_hi numeric, p_integer boolean default false
) returns boolean
language sql
immutable
set search_path = ''
as $$
  select coalesce(jsonb_typeof(p_value) = 'number'
    and p_value::text::numeric between p_lo and p_hi
    and (not p_integer or p_value::text::numeric = trunc(p_value::text::numeric)), false)
$$;

-- What the engine's SQL relies on in a stored definition, or null when all is there:
-- the normalised form shared.definitions.normalise writes (every default explicit,
-- numbers within its model's bounds, dependencies on listed steps). Python owns the
-- defaults and the full validation (cycles, mappings, transformers); this cheap check
-- keeps a definition written around it from failing claims or retries of other jobs.
create or replace function workflow.definition_problem(p_definition jsonb) returns text
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_step jsonb;
  v_retry jsonb;
  v_at text;
  v_ids text[];
begin
  if jsonb_typeof(p_definition -> 'steps') is distinct from 'array'
     or jsonb_array_length(p_definition -> 'steps') = 0 then
    return 'steps: must be a non-empty list';
  end if;
  if not p_definition ? 'output' then
    return 'output: missing';
  end if;
  if not exists (select 1 from jsonb_array_elements(p_definition -> 'steps') e
                 where e -> 'depends_on' = '[]'::jsonb) then
    return 'steps: no step starts at once (depends_on: []), so no job could ever run';
  end if;
  select array_agg(e ->> 'id') into v_ids from jsonb_array_elements(p_definition -> 'steps') e;
  for v_step, v_at in
    select e, 'steps.' || (n - 1) || '.'
    from jsonb_array_elements(p_definition -> 'steps') with ordinality as x(e, n)
  loop
    v_retry := v_step -> 'retry';
    if jsonb_typeof(v_step -> 'id') is distinct from 'string'
       or jsonb_typeof(v_step -> 'transformer') is distinct from 'string' then
      return v_at || 'id, transformer: must be strings';
    elsif jsonb_typeof(v_step -> 'inputs') is distinct from 'object' then
      return v_at || 'inputs: must be an object';
    elsif jsonb_typeof(v_step -> 'depends_on') is distinct from 'array' or exists (
        select 1 from jsonb_array_elements(v_step -> 'depends_on') d
        where jsonb_typeof(d) <> 'string' or not (d #>> '{}') = any(v_ids)) then
      return v_at || 'depends_on: must list ids of the workflow''s steps';
    elsif not workflow.number_within(v_step -> 'timeout_s', 1, 900, true) then
      return v_at || 'timeout_s: must be a whole number of seconds, 1 to 900';
    elsif not workflow.number_within(v_step -> 'delay_s', 0, 2592000) then
      return v_at || 'delay_s: must be a number of seconds, 0 to 2592000 (30 days)';
    elsif jsonb_typeof(v_retry) is distinct from 'object'
       or not workflow.number_within(v_retry -> 'max_retries', 0, 20, true)
       or not workflow.number_within(v_retry -> 'initial_delay_s', 0.001, 86400)
       or not workflow.number_within(v_retry -> 'max_delay_s', 0.001, 86400)
       or not workflow.number_within(v_retry -> 'multiplier', 1, 10)
       or not workflow.number_within(v_retry -> 'jitter', 0, 1) then
      return v_at || 'retry: must be a whole policy (max_retries 0-20, initial_delay_s and'
        || ' max_delay_s 0.001-86400, multiplier 1-10, jitter 0-1)';
    end if;
  end loop;
  return null;
end
$$;

create or replace function workflow.check_definition() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_problem text := coalesce(workflow.value_problem(new.definition),
                             workflow.definition_problem(new.definition));
begin
  if v_problem is not null then
    raise sqlstate 'PT400' using detail = 'invalid_definition', message = format(
      'workflow %s: definition is not in normalised form: %s (store definitions through'
      ' supaflow, which validates them and writes every default out)',
      to_jsonb(coalesce(to_jsonb(new) ->> 'id', to_jsonb(new) ->> 'workflow_id')), v_problem);
  end if;
  return new;
end
$$;

-- Workflow ids, transformer ids and tenant ids as the API accepts them (SQL users too).
create domain workflow.object_id as text
  check (value ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$');
create domain workflow.tenant_id as text
  check (char_length(value) between 1 and 128 and value !~ '[[:cntrl:]]');

-- A workflow is global (tenant_id null: every user may start it) or one tenant's.
-- Its row is the published, current version; edits wait in workflow_drafts.
create table workflow.workflows (
  id workflow.object_id primary key,
  tenant_id workflow.tenant_id,
  description text check (char_length(description) <= 2000),
  definition jsonb not null check (jsonb_typeof(definition) = 'object'),
  version integer not null default 1,
  is_active boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create trigger workflows_check_definition before insert or update of definition
  on workflow.workflows for each row execute function workflow.check_definition();
create trigger workflows_touch before update on workflow.workflows
  for each row execute function workflow.touch_updated_at();

-- Every version a job may still be running, so an edit never changes a job in flight.
create table workflow.workflow_versions (
  workflow_id text not null references workflow.workflows (id) on delete cascade,
  version integer not null,
  definition jsonb not null,
  description text,
  -- Who published it: a user id, 'service_role', or 'sql' (written by hand).
  published_by text not null default 'sql',
  created_at timestamptz not null default now(),
  primary key (workflow_id, version)
);

create or replace function workflow.record_workflow_version() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'UPDATE' then
    if new.definition is distinct from old.definition then
      new.version := old.version + 1;
    else
      new.version := old.version;
      return new;
    end if;
  end if;
  insert into workflow.workflow_versions (workflow_id, version, definition, description)
  values (new.id, new.version, new.definition, new.description)
  on conflict (workflow_id, version) do update set definition = excluded.definition,
    description = excluded.description;
  return new;
end
$$;

create trigger workflows_version_insert after insert on workflow.workflows
  for each row execute function workflow.record_workflow_version();
create trigger workflows_version_update before update on workflow.workflows
  for each row execute function workflow.record_workflow_version();

-- The next version of a workflow, edited until it is published (publish_workflow);
-- never read by a start. A draft may exist before any version does.
create table workflow.workflow_drafts (
  workflow_id workflow.object_id primary key,
  tenant_id workflow.tenant_id,
  description text check (char_length(description) <= 2000),
  definition jsonb not null check (jsonb_typeof(definition) = 'object'),
  -- Counts the PUTs of this draft: a publish may name the revision its caller saw.
  revision integer not null default 1,
  updated_by text not null,
  updated_at timestamptz not null default now()
);

create trigger workflow_drafts_check_definition before insert or update of definition
  on workflow.workflow_drafts for each row execute function workflow.check_definition();

-- Transformers, like workflows, are global or one tenant's.
create table workflow.transformers (
  id workflow.object_id primary key,
  tenant_id workflow.tenant_id,
  type text not null,
  description text check (char_length(description) <= 2000),
  config jsonb not null default '{}'::jsonb
    check (jsonb_typeof(config) = 'object' and workflow.value_problem(config) is null),
  target_function text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index transformers_type_idx on workflow.transformers (type);
create trigger transformers_touch before update on workflow.transformers
  for each row execute function workflow.touch_updated_at();

-- Jobs ------------------------------------------------------------------------

create table workflow.jobs (
  id uuid primary key default gen_random_uuid(),
  -- The user it runs for; null for a job started in SQL for nobody (a schedule's, say).
  user_id uuid references auth.users (id) on delete cascade,
  -- The starter's tenant (their token's tenant claim, workflow.claims_tenant) or null.
  tenant_id workflow.tenant_id,
  workflow_id text not null references workflow.workflows (id),
  workflow_version integer not null,
  current_step_id text,
  status text not null default 'pending'
    check (status in ('pending', 'running', 'completed', 'failed', 'awaiting_retry', 'cancelled')),
  input_data jsonb not null default '{}'::jsonb,
  step_data jsonb not null default '{}'::jsonb,
  final_result jsonb,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  last_updated_at timestamptz not null default now(),
  completed_at timestamptz,
  error_message text,
  -- Seed 002's columns, derived: retries scheduled so far across the job's steps, and
  -- the most retries any of its steps allows (each step keeps its own policy).
  retry_count integer not null default 0,
  max_retries integer not null default 3,
  next_retry_at timestamptz,
  state_history jsonb not null default '[]'::jsonb,
  idempotency_key text check (char_length(idempotency_key) between 1 and 255),
  -- What started it: the API, SQL (workflow.start_workflow), a database trigger, a
  -- schedule or an inbound webhook; the job_created event says more.
  origin text not null default 'api'
    check (origin in ('api', 'sql', 'trigger', 'schedule', 'webhook')),
  -- A key names one start of one workflow by one user, or by nobody (like Stripe's keys).
  unique (user_id, workflow_id, idempotency_key)
);

create index jobs_user_created_idx on workflow.jobs (user_id, created_at desc, id desc);
create unique index jobs_nobody_idempotency_idx on workflow.jobs (workflow_id, idempotency_key)
  where user_id is null;
create index jobs_tenant_created_idx on workflow.jobs (tenant_id, created_at desc, id desc);
create index jobs_created_idx on workflow.jobs (created_at desc, id desc);
create index jobs_status_step_idx on workflow.jobs (status, current_step_id);
create index jobs_workflow_idx on workflow.jobs (workflow_id);
create index jobs_retry_idx on workflow.jobs (next_retry_at) where status = 'awaiting_retry';

create trigger jobs_touch before update on workflow.jobs
  for each row execute function workflow.touch_last_updated_at();

create table workflow.job_steps (
  id bigint generated always as identity primary key,
  job_id uuid not null references workflow.jobs (id) on delete cascade,
  step_id text not null,
  transformer_id text not null,
  depends_on text[] not null default '{}',
  definition jsonb not null,
  status text not null default 'waiting'
    check (status in ('waiting', 'ready', 'running', 'completed', 'failed', 'cancelled')),
  attempt integer not null default 0,
  max_attempts integer not null default 4 check (max_attempts >= 1),
  next_attempt_at timestamptz,
  lease_token uuid,
  lease_expires_at timestamptz,
  output jsonb,
  error text,
  -- What the last failed attempt's error was (shared.protocol.ErrorType), for metrics.
  error_type text,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  completed_at timestamptz,
  updated_at timestamptz not null default now(),
  unique (job_id, step_id)
);

-- The orchestrator's claim reads only these two small sets, whatever the history.
create index job_steps_runnable_idx on workflow.job_steps (next_attempt_at, id)
  where status = 'ready';
create index job_steps_leased_idx on workflow.job_steps (lease_expires_at)
  where status = 'running';

create trigger job_steps_touch before update on workflow.job_steps
  for each row execute function workflow.touch_updated_at();

create table workflow.job_events (
  id bigint generated always as identity primary key,
  job_id uuid not null references workflow.jobs (id) on delete cascade,
  seq integer not null,
  event_type text not null,
  step_id text,
  attempt integer,
  from_status text,
  to_status text,
  detail jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  -- The writing transaction: metrics roll up the events of every transaction that has
  -- ended (below the snapshot's xmin), so none is counted twice or skipped.
  xid xid8 not null default pg_catalog.pg_current_xact_id(),
  unique (job_id, seq)
);

-- Per-user limits on starts; a row with user_id null is the default for everyone.
create table workflow.rate_limits (
  user_id uuid unique references auth.users (id) on delete cascade,
  max_starts integer not null check (max_starts >= 0),
  window_seconds integer not null check (window_seconds > 0)
);
create unique index rate_limits_default_idx on workflow.rate_limits ((user_id is null))
  where user_id is null;
insert into workflow.rate_limits (user_id, max_starts, window_seconds) values (null, 600, 60);

-- Orchestrator passes that are alive: draining, or lingering to poll for new steps.
-- While one is, a start needs no kick (start_job says so); a pass's row is its
-- heartbeat, renewed as it claims, removed by end_pass.
create table workflow.orchestrator_passes (
  id uuid primary key,
  alive_until timestamptz not null
);

-- When the last pass ended (end_pass): GET /health reports its age.
create table workflow.orchestrator_last_pass (
  id boolean primary key default true check (id),
  ended_at timestamptz not null
);

-- Deployment settings the SQL reads (one row). tenant_claim: where a user's tenant is
-- in their JWT's claims (a path for #>>); change it with an update of this row.
create table workflow.config (
  id boolean primary key default true check (id),
  tenant_claim text[] not null default '{app_metadata,tenant_id}'
    check (cardinality(tenant_claim) between 1 and 8)
);
insert into workflow.config default values;

-- Who the caller is ----------------------------------------------------------
-- Every rule about callers reads their verified JWT claims through these functions:
-- RLS with auth.jwt(), and the service role's functions with the claims the HTTP
-- function verified (p_claims; {"role": "service_role"} for the service-role key).

-- The service role (the service-role key): admin of every tenant.
create or replace function workflow.claims_service(p_claims jsonb) returns boolean
language sql
immutable
set search_path = ''
as $$
  select coalesce(p_claims ->> 'role' = 'service_role', false)
$$;

-- The caller's tenant: the claim workflow.config names (default app_metadata.tenant_id).
create or replace function workflow.claims_tenant(p_claims jsonb) returns text
language sql
stable
security definer
set search_path = ''
as $$
  select nullif(p_claims #>> (select c.tenant_claim from workflow.config c), '')
$$;

-- Admins: the service role, and users whose app_metadata (which only the server can
-- set) says supaflow_role "admin". A user admin administers their own tenant only.
create or replace function workflow.claims_admin(p_claims jsonb) returns boolean
language sql
immutable
set search_path = ''
as $$
  select workflow.claims_service(p_claims)
         or coalesce(p_claims #>> '{app_metadata,supaflow_role}' = 'admin', false)
$$;

-- Administers objects of p_tenant (null: the global ones): the service role all of
-- them, a user admin those of their own tenant (a user admin without one: the global).
create or replace function workflow.claims_manage(p_claims jsonb, p_tenant text) returns boolean
language sql
stable
set search_path = ''
as $$
  select workflow.claims_service(p_claims)
         or (workflow.claims_admin(p_claims)
             and p_tenant is not distinct from workflow.claims_tenant(p_claims))
$$;

-- May see (and start) a workflow or use a transformer of p_tenant: global ones, and
-- those of the caller's tenant.
create or replace function workflow.claims_reach(p_claims jsonb, p_tenant text) returns boolean
language sql
stable
set search_path = ''
as $$
  select p_tenant is null or workflow.claims_service(p_claims)
         or p_tenant = workflow.claims_tenant(p_claims)
$$;

-- May see and control (cancel, retry) a job: its owner, and its tenant's admins.
create or replace function workflow.claims_control(
  p_claims jsonb, p_user_id uuid, p_tenant text
) returns boolean
language sql
stable
set search_path = ''
as $$
  select p_user_id::text = p_claims ->> 'sub' or workflow.claims_manage(p_claims, p_tenant)
$$;

-- Who did it, for event details and published_by: a user id or the role.
create or replace function workflow.claims_actor(p_claims jsonb) returns text
language sql
immutable
set search_path = ''
as $$
  select coalesce(p_claims ->> 'sub', p_claims ->> 'role', 'sql')
$$;

-- Row level security ----------------------------------------------------------
-- What users may read directly (PostgREST, supabase-js), by the same rules as the API.
-- A policy's subquery on jobs or workflows is itself filtered by that table's policy.

alter table workflow.workflows enable row level security;
alter table workflow.workflow_versions enable row level security;
alter table workflow.workflow_drafts enable row level security;
alter table workflow.transformers enable row level security;
alter table workflow.jobs enable row level security;
alter table workflow.job_steps enable row level security;
alter table workflow.job_events enable row level security;
alter table workflow.orchestrator_passes enable row level security;
alter table workflow.orchestrator_last_pass enable row level security;
alter table workflow.config enable row level security;
alter table workflow.rate_limits enable row level security;

create policy workflows_read on workflow.workflows
  for select to authenticated using (
    (is_active and workflow.claims_reach((select auth.jwt()), tenant_id))
    or workflow.claims_manage((select auth.jwt()), tenant_id)
  );

create policy workflow_versions_read on workflow.workflow_versions
  for select to authenticated using (
    exists (select 1 from workflow.workflows w
            where w.id = workflow_id and workflow.claims_manage((select auth.jwt()), w.tenant_id))
  );

create policy workflow_drafts_read on workflow.workflow_drafts
  for select to authenticated using (workflow.claims_manage((select auth.jwt()), tenant_id));

-- Only the transformers an admin manages: another's config (a global webhook's headers,
-- say) is not theirs to read. list_transformers shows the global ones without config.
create policy transformers_read on workflow.transformers
  for select to authenticated using (workflow.claims_manage((select auth.jwt()), tenant_id));

-- claims_control, written out so each branch can use an index: the owner's jobs
-- (jobs_user_created_idx), an admin's tenant's (jobs_tenant_created_idx).
create policy jobs_read on workflow.jobs
  for select to authenticated using (
    user_id = (select auth.uid())
    or ((select workflow.claims_admin(auth.jwt()))
        and (tenant_id = (select workflow.claims_tenant(auth.jwt()))
             or (tenant_id is null and (select workflow.claims_tenant(auth.jwt())) is null)))
  );

create policy job_steps_read on workflow.job_steps
  for select to authenticated using (
    exists (select 1 from workflow.jobs j where j.id = job_id)
  );

create policy job_events_read on workflow.job_events
  for select to authenticated using (
    exists (select 1 from workflow.jobs j where j.id = job_id)
  );
