-- Cron-scheduled workflows (DESIGN.md section 11): each enabled schedule is a pg_cron job
-- named `supaflow-schedule:<id>` that calls run_schedule, which starts the workflow
-- through start_workflow (origin schedule). Managed by the service role (they install
-- cron jobs): PUT/GET/DELETE /schedules.
--
-- Time zones: pg_cron 1.4 reads every expression in UTC. A schedule in another zone gets
-- a pg_cron job that fires every minute (every hour where the zone's offset is whole
-- hours all year) and calls run_schedule_when_due, which reads the schedule's own
-- expression against the local time (cron_matches). A local time the clocks skip does
-- not run that day; one they repeat runs once (the run's key is the local minute).

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

-- The five fields an expression stands for: pg_cron's @-names spelled out.
create or replace function workflow.cron_fields(p_cron text) returns text[]
language sql
immutable
set search_path = ''
as $$
  select pg_catalog.regexp_split_to_array(pg_catalog.btrim(case pg_catalog.lower(pg_catalog.btrim(p_cron))
    when '@yearly' then '0 0 1 1 *' when '@annually' then '0 0 1 1 *'
    when '@monthly' then '0 0 1 * *' when '@weekly' then '0 0 * * 0'
    when '@daily' then '0 0 * * *' when '@midnight' then '0 0 * * *'
    when '@hourly' then '0 * * * *' else p_cron end), '\s+')
$$;

-- The values one cron field allows, read as vixie cron (and so pg_cron) reads it:
-- lists of *, n, a-b, each with an optional /step (not after a lone n), names where the
-- field has them (jan, mon). Null when the field is none of these.
create or replace function workflow.cron_field_values(
  p_field text, p_low integer, p_high integer, p_names text[]
) returns integer[]
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_part text;
  v_match text[];
  v_bounds integer[];
  v_token text;
  v_values integer[] := '{}';
begin
  foreach v_part in array pg_catalog.string_to_array(pg_catalog.lower(p_field), ',') loop
    v_match := pg_catalog.regexp_match(v_part, '^(\*|([0-9a-z]+)(-([0-9a-z]+))?)(/([0-9]{1,2}))?$');
    if v_match is null or (v_match[6] is not null and v_match[2] is not null and v_match[4] is null)
       or v_match[6]::integer = 0 then
      return null;
    end if;
    v_bounds := '{}';
    foreach v_token in array case when v_match[1] = '*' then array[p_low::text, p_high::text]
                                  else array[v_match[2], coalesce(v_match[4], v_match[2])] end loop
      v_bounds := v_bounds || case
        when v_token ~ '^[0-9]{1,2}$' then v_token::integer
        else pg_catalog.array_position(p_names, v_token) - 1 + p_low end;
    end loop;
    if v_bounds[1] is null or v_bounds[2] is null or v_bounds[1] < p_low or v_bounds[2] > p_high
       or v_bounds[1] > v_bounds[2] then
      return null;
    end if;
    v_values := v_values || array(select pg_catalog.generate_series(
      v_bounds[1], v_bounds[2], coalesce(v_match[6]::integer, 1)));
  end loop;
  return v_values;
end
$$;

-- Whether a five-field expression is due at this local time (minute precision). Vixie
-- cron's day rule: when both day fields are restricted, either may match; day of week 7
-- is Sunday. Null when the expression is not five fields this reads.
create or replace function workflow.cron_matches(p_cron text, p_at timestamp) returns boolean
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_fields text[] := workflow.cron_fields(p_cron);
  v_minutes integer[] := workflow.cron_field_values(v_fields[1], 0, 59, null);
  v_hours integer[] := workflow.cron_field_values(v_fields[2], 0, 23, null);
  v_days integer[] := workflow.cron_field_values(v_fields[3], 1, 31, null);
  v_months integer[] := workflow.cron_field_values(v_fields[4], 1, 12,
    '{jan,feb,mar,apr,may,jun,jul,aug,sep,oct,nov,dec}');
  v_weekdays integer[] := workflow.cron_field_values(v_fields[5], 0, 7,
    '{sun,mon,tue,wed,thu,fri,sat}');
  v_day boolean;
  v_weekday boolean;
begin
  if pg_catalog.cardinality(v_fields) <> 5 or v_minutes is null or v_hours is null
     or v_days is null or v_months is null or v_weekdays is null then
    return null;
  end if;
  v_day := extract(day from p_at)::integer = any (v_days);
  v_weekday := extract(dow from p_at)::integer = any (v_weekdays)
               or (extract(dow from p_at) = 0 and 7 = any (v_weekdays));
  return extract(minute from p_at)::integer = any (v_minutes)
     and extract(hour from p_at)::integer = any (v_hours)
     and extract(month from p_at)::integer = any (v_months)
     and case when v_fields[3] like '*%' or v_fields[5] like '*%' then v_day and v_weekday
              else v_day or v_weekday end;
end
$$;

-- The pg_cron expression that wakes a schedule in this zone often enough: its own minute
-- field each hour where the zone's offset is whole hours through the coming year (most
-- zones), every minute elsewhere (India's :30, Nepal's :45, Lord Howe's half-hour DST).
create or replace function workflow.cron_wake_expression(p_cron text, p_timezone text)
returns text
language sql
stable
set search_path = ''
as $$
  select case
    when p_timezone = 'UTC' then p_cron
    when exists (select 1 from pg_catalog.generate_series(0, 12) m,
                   lateral (select now() + m * interval '1 month' as at) t
                 where extract(epoch from (t.at at time zone p_timezone)
                                          - (t.at at time zone 'UTC'))::integer % 3600 <> 0)
      then '* * * * *'
    else (workflow.cron_fields(p_cron))[1] || ' * * * *' end
$$;

-- One run (pg_cron calls it, or run_schedule_when_due): a job of the schedule's
-- workflow, unless the schedule is disabled or (overlap skip) its previous job is still
-- going. The key names the local minute, so a run repeated within it starts nothing
-- more. A failure is kept on the schedule.
create or replace function workflow.run_schedule(p_schedule_id text, p_at timestamptz default now())
returns jsonb
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
      'schedule:' || v_schedule.id || ':' || pg_catalog.to_char(
        pg_catalog.date_trunc('minute', p_at at time zone v_schedule.timezone),
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

-- pg_cron's call for a schedule outside UTC: a run when the schedule's expression is due
-- at this minute in its zone, nothing otherwise.
create or replace function workflow.run_schedule_when_due(
  p_schedule_id text, p_at timestamptz default now()
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_schedule workflow.schedules;
begin
  select * into v_schedule from workflow.schedules where id = p_schedule_id;
  if v_schedule.id is null
     or not coalesce(workflow.cron_matches(v_schedule.cron, p_at at time zone v_schedule.timezone),
                     false) then
    return jsonb_build_object('started', false, 'reason', 'not due');
  end if;
  return workflow.run_schedule(p_schedule_id, p_at);
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
  if coalesce(p_timezone, 'UTC') <> 'UTC' and not exists (
      select 1 from pg_catalog.pg_timezone_names where name = p_timezone) then
    raise sqlstate 'PT400' using detail = 'bad_request', message = format(
      'timezone: %s is not a time zone name (Europe/Paris, America/New_York, UTC)',
      to_jsonb(p_timezone));
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
  begin  -- pg_cron judges the expression (and then keeps it, for a schedule in UTC)
    perform cron.schedule(v_name, p_cron,
                          format('select workflow.run_schedule(%L)', p_schedule_id));
  exception when others then
    raise sqlstate 'PT400' using detail = 'bad_request', message = format(
      'cron: %s is not a cron expression (%s)', to_jsonb(p_cron), sqlerrm);
  end;
  if coalesce(p_timezone, 'UTC') <> 'UTC' then
    if workflow.cron_matches(p_cron, now()::timestamp) is null then
      raise sqlstate 'PT400' using detail = 'bad_request', message = format(
        'cron: outside UTC, %s must be five fields of numbers, names, *, ranges, lists and'
        || ' steps (or @daily, @hourly...)', to_jsonb(p_cron));
    end if;
    perform cron.schedule(v_name, workflow.cron_wake_expression(p_cron, p_timezone),
                          format('select workflow.run_schedule_when_due(%L)', p_schedule_id));
  end if;
  if not coalesce(p_enabled, true) then
    perform workflow.unschedule(v_name);
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
