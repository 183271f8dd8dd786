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

create table workflow.workflows (
  id text primary key,
  description text,
  definition jsonb not null check (jsonb_typeof(definition) = 'object'),
  version integer not null default 1,
  is_active boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create trigger workflows_touch before update on workflow.workflows
  for each row execute function workflow.touch_updated_at();

-- Every version a job may still be running, so an edit never changes a job in flight.
create table workflow.workflow_versions (
  workflow_id text not null references workflow.workflows (id) on delete cascade,
  version integer not null,
  definition jsonb not null,
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
  insert into workflow.workflow_versions (workflow_id, version, definition)
  values (new.id, new.version, new.definition)
  on conflict (workflow_id, version) do update set definition = excluded.definition;
  return new;
end
$$;

create trigger workflows_version_insert after insert on workflow.workflows
  for each row execute function workflow.record_workflow_version();
create trigger workflows_version_update before update on workflow.workflows
  for each row execute function workflow.record_workflow_version();

create table workflow.transformers (
  id text primary key,
  type text not null,
  description text,
  config jsonb not null default '{}'::jsonb check (jsonb_typeof(config) = 'object'),
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
  user_id uuid not null references auth.users (id) on delete cascade,
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
  -- the workflow-level max_retries the job started with (a step's own policy wins).
  retry_count integer not null default 0,
  max_retries integer not null default 3,
  next_retry_at timestamptz,
  state_history jsonb not null default '[]'::jsonb,
  idempotency_key text check (char_length(idempotency_key) between 1 and 255),
  -- A key names one start of one workflow by one user (like Stripe's keys).
  unique (user_id, workflow_id, idempotency_key)
);

create index jobs_user_created_idx on workflow.jobs (user_id, created_at desc, id desc);
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

-- Row level security ----------------------------------------------------------

alter table workflow.workflows enable row level security;
alter table workflow.workflow_versions enable row level security;
alter table workflow.transformers enable row level security;
alter table workflow.jobs enable row level security;
alter table workflow.job_steps enable row level security;
alter table workflow.job_events enable row level security;
alter table workflow.orchestrator_passes enable row level security;
alter table workflow.rate_limits enable row level security;

create policy workflows_read_active on workflow.workflows
  for select to authenticated using (is_active);

create policy jobs_read_own on workflow.jobs
  for select to authenticated using (user_id = (select auth.uid()));

create policy job_steps_read_own on workflow.job_steps
  for select to authenticated using (
    exists (select 1 from workflow.jobs j where j.id = job_id and j.user_id = (select auth.uid()))
  );

create policy job_events_read_own on workflow.job_events
  for select to authenticated using (
    exists (select 1 from workflow.jobs j where j.id = job_id and j.user_id = (select auth.uid()))
  );
