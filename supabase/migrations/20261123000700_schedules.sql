-- Cron-scheduled workflows (DESIGN.md section 11): each enabled schedule is a pg_cron job
-- named `supaflow-schedule:<id>` that calls run_schedule, which starts the workflow
-- through start_workflow (origin schedule). Managed by the service role (they install
-- cron jobs): PUT/GET/DELETE /schedules.

create table workflow.schedules (
  id workflow.object_id primary key,
  workflow_id text not null,
  cron text not null check (char_length(cron) <= 100),
  timezone text not null default 'UTC',
  input jsonb not null default '{}'::jsonb check (jsonb_typeof(input) = 'object'),
  -- A deleted owner's schedules go with them (never silently run for nobody).
  owner uuid references auth.users (id) on delete cascade,
  enabled boolean not null default true,
  -- When the previous run is still going: skip this one, or start another anyway.
  overlap text not null default 'skip' check (overlap in ('skip', 'allow')),
  last_run_at timestamptz,
  last_job_id uuid,
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
alter table workflow.schedules enable row level security;

create or replace function workflow.schedule_job_name(p_schedule_id text) returns text
language sql
immutable
set search_path = ''
as $$
  select 'supaflow-schedule:' || p_schedule_id
$$;

-- Removes the pg_cron job of this name, if there is one (cron.unschedule raises otherwise).
create or replace function workflow.unschedule(p_job_name text) returns void
language plpgsql
set search_path = ''
as $$
begin
  if exists (select 1 from cron.job where jobname = p_job_name) then
    perform cron.unschedule(p_job_name);
  end if;
end
$$;

-- One run (pg_cron calls it): a job of the schedule's workflow, unless the schedule is
-- disabled or (overlap skip) its previous job is still going. The key names the minute,
-- so a run repeated within it starts nothing more. A failure is kept on the schedule.
create or replace function workflow.run_schedule(p_schedule_id text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_schedule workflow.schedules;
  v_result jsonb;
  v_error text;
begin
  select * into v_schedule from workflow.schedules where id = p_schedule_id for update;
  if v_schedule.id is null or not v_schedule.enabled then
    return jsonb_build_object('started', false, 'reason', 'disabled');
  end if;
  if v_schedule.overlap = 'skip' and exists (
      select 1 from workflow.jobs j where j.id = v_schedule.last_job_id
        and j.status not in ('completed', 'failed', 'cancelled')) then
    return jsonb_build_object('started', false, 'reason', 'previous run still going');
  end if;
  begin
    v_result := workflow.start_workflow(
      v_schedule.workflow_id, v_schedule.input, v_schedule.owner,
      'schedule:' || v_schedule.id || ':' || to_char(date_trunc('minute', now()) at time zone 'UTC',
                                                     'YYYY-MM-DD"T"HH24:MI'),
      jsonb_build_object('type', 'schedule', 'schedule_id', v_schedule.id));
    update workflow.schedules set last_run_at = now(), last_job_id = (v_result ->> 'job_id')::uuid,
      last_error = null where id = p_schedule_id;
    return jsonb_build_object('started', true) || v_result;
  exception when others then
    get stacked diagnostics v_error = message_text;
    update workflow.schedules set last_run_at = now(), last_error = v_error
    where id = p_schedule_id;
    return jsonb_build_object('started', false, 'reason', v_error);
  end;
end
$$;

-- PUT /schedules/{id}: create or replace; its pg_cron job exists while it is enabled.
create or replace function workflow.put_schedule(
  p_schedule_id text, p_workflow_id text, p_cron text, p_timezone text, p_input jsonb,
  p_owner uuid, p_enabled boolean, p_overlap text, p_claims jsonb
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row workflow.schedules;
  v_name text := workflow.schedule_job_name(p_schedule_id);
begin
  perform workflow.require_service(p_claims);
  perform workflow.check_object_id(p_schedule_id, 'schedule id');
  perform workflow.lock_object('schedule', p_schedule_id);
  if not exists (select 1 from workflow.workflows where id = p_workflow_id) then
    raise sqlstate 'PT400' using detail = 'bad_request', message = format(
      'workflow_id: workflow %s not found', to_jsonb(p_workflow_id));
  end if;
  if coalesce(p_timezone, 'UTC') <> 'UTC' then
    -- pg_cron 1.4 runs every job in one time zone (the server's, UTC).
    raise sqlstate 'PT400' using detail = 'bad_request', message = format(
      'timezone: only UTC for now, not %s (write the expression in UTC)', to_jsonb(p_timezone));
  end if;
  if p_owner is not null and not exists (select 1 from auth.users where id = p_owner) then
    raise sqlstate 'PT400' using detail = 'bad_request', message = 'owner: no such user';
  end if;
  if coalesce(p_overlap, 'skip') not in ('skip', 'allow') then
    raise sqlstate 'PT400' using detail = 'bad_request', message = 'overlap: skip or allow';
  end if;
  if workflow.value_problem(coalesce(p_input, '{}'::jsonb)) is not null
     or jsonb_typeof(coalesce(p_input, '{}'::jsonb)) <> 'object' then
    raise sqlstate 'PT400' using detail = 'bad_request', message = 'input: a JSON object within'
      || ' the bounds (64 levels, 1 MiB)';
  end if;
  perform workflow.unschedule(v_name);
  if coalesce(p_enabled, true) then
    begin
      perform cron.schedule(v_name, p_cron,
                            format('select workflow.run_schedule(%L)', p_schedule_id));
    exception when others then
      raise sqlstate 'PT400' using detail = 'bad_request', message = format(
        'cron: %s is not a cron expression (%s)', to_jsonb(p_cron), sqlerrm);
    end;
  end if;
  insert into workflow.schedules as s (id, workflow_id, cron, timezone, input, owner, enabled,
                                       overlap)
  values (p_schedule_id, p_workflow_id, p_cron, coalesce(p_timezone, 'UTC'),
          coalesce(p_input, '{}'::jsonb), p_owner, coalesce(p_enabled, true),
          coalesce(p_overlap, 'skip'))
  on conflict (id) do update set workflow_id = excluded.workflow_id, cron = excluded.cron,
    timezone = excluded.timezone, input = excluded.input, owner = excluded.owner,
    enabled = excluded.enabled, overlap = excluded.overlap, updated_at = now()
  returning * into v_row;
  return to_jsonb(v_row) - 'id' || jsonb_build_object(
    'schedule_id', v_row.id, 'cron_job', case when v_row.enabled then v_name end);
end
$$;

-- DELETE /schedules/{id}: its pg_cron job goes with it.
create or replace function workflow.delete_schedule(p_schedule_id text, p_claims jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_name text := workflow.schedule_job_name(p_schedule_id);
begin
  perform workflow.require_service(p_claims);
  perform workflow.lock_object('schedule', p_schedule_id);
  if not exists (select 1 from workflow.schedules where id = p_schedule_id) then
    raise sqlstate 'PT404' using message = format('schedule %s not found', to_jsonb(p_schedule_id));
  end if;
  perform workflow.unschedule(v_name);
  delete from workflow.schedules where id = p_schedule_id;
  return jsonb_build_object('schedule_id', p_schedule_id, 'deleted', true);
end
$$;

create or replace function workflow.list_schedules(p_claims jsonb) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform workflow.require_service(p_claims);
  return coalesce((
    select jsonb_agg(to_jsonb(s) - 'id' || jsonb_build_object(
             'schedule_id', s.id,
             'cron_job', (select j.jobname from cron.job j
                          where j.jobname = workflow.schedule_job_name(s.id)))
           order by s.id)
    from workflow.schedules s), '[]'::jsonb);
end
$$;
