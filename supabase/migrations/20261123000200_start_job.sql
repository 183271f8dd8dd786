-- Starting a job: one transaction creates the job, its steps and its first event.
-- Called by the service role only (start-workflow, with the user it verified):
-- users never call it themselves, so it checks everything that may not be trusted.
-- User text in an error message is quoted as JSON (to_jsonb): PostgREST sends a PTxxx
-- message as the HTTP reason phrase, where a raw control character breaks the response.

-- Does a new job need an orchestrator kick? Not while a pass is alive: it waits for
-- new steps (wait_for_ready). The shared lock, held to commit, makes end_pass wait for this start, so
-- a pass never ends between a start that saw it alive and that start's commit.
create or replace function workflow.kick_needed() returns boolean
language plpgsql
set search_path = ''
as $$
begin
  perform pg_advisory_xact_lock_shared(hashtextextended('supaflow: a pass ends', 0));
  return not exists (select 1 from workflow.orchestrator_passes where alive_until > now());
end
$$;

-- Appends one event to a job's log. Its sequence number comes from the log
-- itself ((job_id, seq) is unique and indexed): the caller holds the job's row
-- lock, so max(seq) + 1 has no gaps and no races, and the job's row is not
-- rewritten for every event.
create or replace function workflow.append_event(
  p_job_id uuid, p_event_type text, p_step_id text default null, p_attempt integer default null,
  p_from_status text default null, p_to_status text default null,
  p_detail jsonb default '{}'::jsonb
) returns void
language sql
set search_path = ''
as $$
  insert into workflow.job_events
    (job_id, seq, event_type, step_id, attempt, from_status, to_status, detail)
  select p_job_id, coalesce(max(e.seq), 0) + 1, p_event_type, p_step_id, p_attempt,
         p_from_status, p_to_status, coalesce(p_detail, '{}'::jsonb)
  from workflow.job_events e
  where e.job_id = p_job_id
$$;

-- Raises PT429 (PostgREST answers HTTP 429) when the user is over their limit;
-- the hint carries the seconds until a start is allowed again.
create or replace function workflow.check_start_rate(p_user_id uuid) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_max integer;
  v_window integer;
  v_count integer;
  v_oldest timestamptz;
begin
  select max_starts, window_seconds into v_max, v_window
  from workflow.rate_limits
  where user_id = p_user_id or user_id is null
  order by user_id nulls last
  limit 1;
  if v_max is null then
    return;
  end if;
  select count(*), min(created_at) into v_count, v_oldest
  from (
    select created_at from workflow.jobs
    where user_id = p_user_id and created_at > now() - make_interval(secs => v_window)
    order by created_at desc
    limit v_max
  ) recent;
  if v_count >= v_max then
    raise sqlstate 'PT429' using
      message = format('rate limit: at most %s starts per %s s', v_max, v_window),
      hint = greatest(1, ceil(extract(epoch from
        v_oldest + make_interval(secs => v_window) - now())))::text;
  end if;
end
$$;

-- Step rows of a normalised definition (every default is already written out).
create or replace function workflow.definition_steps(p_definition jsonb)
returns table (step_id text, transformer_id text, depends_on text[], definition jsonb,
               max_attempts integer)
language sql
immutable
set search_path = ''
as $$
  select step ->> 'id', step ->> 'transformer',
         array(select jsonb_array_elements_text(step -> 'depends_on')),
         step, 1 + (step -> 'retry' ->> 'max_retries')::numeric::integer
  from jsonb_array_elements(p_definition -> 'steps') as e(step)
$$;

-- p_claims: the starter's verified JWT claims; the job records their tenant, and only
-- a global workflow or one of that tenant starts. The service role's claims start any
-- workflow, for its tenant, and may start it for no user (p_user_id null). p_origin
-- ({"type": "api" | "sql" | "trigger" | "schedule" | "webhook", ...}) is what started it.
-- p_start_at: when its first steps may run (null or past: now; a user's, at most 30 days ahead);
-- each root step's own delay_s counts from then. Waiting costs nothing: the steps are
-- ready with a later next_attempt_at, found by the claims when due.
create or replace function workflow.start_job(
  p_user_id uuid, p_workflow_id text, p_workflow_version integer, p_input jsonb,
  p_idempotency_key text default null, p_claims jsonb default '{}'::jsonb,
  p_origin jsonb default '{"type": "api"}'::jsonb, p_start_at timestamptz default null,
  p_check_kick boolean default true
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_version integer;
  v_definition jsonb;
  v_tenant text;
  v_problem text;
  v_job workflow.jobs;
begin
  if p_user_id is null and not workflow.claims_service(p_claims) then
    raise sqlstate 'PT400' using message = 'a user id is required to start a job';
  end if;
  if p_user_id is not null and not exists (select 1 from auth.users where id = p_user_id) then
    -- e.g. a deleted user whose token has not expired yet
    raise sqlstate 'PT401' using message = 'the token''s user does not exist';
  end if;
  if jsonb_typeof(p_input) is distinct from 'object' then
    raise sqlstate 'PT400' using message = 'input_data: must be a JSON object',
      detail = 'invalid_input';
  end if;
  v_problem := workflow.value_problem(p_input);
  if v_problem is not null then
    raise sqlstate 'PT400' using message = 'input_data: ' || v_problem, detail = 'invalid_input';
  end if;
  -- Serialise one user's starts: the rate limit and idempotency hold under concurrency.
  -- (Nobody's starts: only those with a key need it, and only against each other.)
  if p_user_id is not null then
    perform pg_advisory_xact_lock(hashtextextended(p_user_id::text, 42));
  elsif p_idempotency_key is not null then
    perform pg_advisory_xact_lock(hashtextextended(p_workflow_id || ' ' || p_idempotency_key, 42));
  end if;

  if p_idempotency_key is not null then
    select * into v_job from workflow.jobs
    where (user_id = p_user_id or (p_user_id is null and user_id is null))
      and workflow_id = p_workflow_id and idempotency_key = p_idempotency_key;
    if found then
      if v_job.input_data is distinct from p_input then
        raise sqlstate 'PT409' using detail = 'idempotency_conflict', message = format(
          'idempotency_key %s was used for job %s with a different input', to_jsonb(p_idempotency_key),
          v_job.id);
      end if;
      return jsonb_build_object('job_id', v_job.id, 'status', v_job.status,
                                'created_at', v_job.created_at, 'existing', true);
    end if;
  end if;

  -- Only the current version starts: the caller validated the input against it.
  select w.version, v.definition, w.tenant_id into v_version, v_definition, v_tenant
  from workflow.workflows w
  join workflow.workflow_versions v on v.workflow_id = w.id and v.version = w.version
  where w.id = p_workflow_id and w.is_active
    and workflow.claims_reach(coalesce(p_claims, '{}'::jsonb), w.tenant_id);
  if v_version is null then
    raise sqlstate 'PT404' using message = format('workflow %s not found', to_jsonb(p_workflow_id));
  end if;
  if p_workflow_version is distinct from v_version then
    raise sqlstate 'PT409' using detail = 'workflow_changed', hint = v_version::text,
      message = format('workflow %s is at version %s, not %s', to_jsonb(p_workflow_id), v_version,
                       p_workflow_version);
  end if;

  -- Users start at most 30 days ahead; trusted SQL (a trigger's phase: a booking months
  -- out) may start later.
  if p_start_at > now() + interval '30 days' and not workflow.claims_service(p_claims) then
    raise sqlstate 'PT400' using detail = 'bad_request',
      message = 'start_at: at most 30 days ahead';
  end if;
  if p_user_id is not null then  -- nobody's starts come from trusted SQL: not limited
    perform workflow.check_start_rate(p_user_id);
  end if;
  if jsonb_typeof(p_origin -> 'type') is distinct from 'string'
     or p_origin ->> 'type' not in ('api', 'sql', 'trigger', 'schedule', 'webhook') then
    raise sqlstate 'PT400' using message = 'origin: type must be api, sql, trigger, schedule'
                                           || ' or webhook';
  end if;

  insert into workflow.jobs (user_id, tenant_id, workflow_id, workflow_version, input_data,
                             idempotency_key, origin, max_retries, state_history)
  values (p_user_id,
          case when workflow.claims_service(p_claims) then v_tenant
               else workflow.claims_tenant(p_claims) end,
          p_workflow_id, v_version, p_input, p_idempotency_key, p_origin ->> 'type',
          (select max(d.max_attempts) - 1 from workflow.definition_steps(v_definition) d),
          jsonb_build_array(jsonb_build_object('status', 'pending', 'at', now())))
  returning * into v_job;

  insert into workflow.job_steps (job_id, step_id, transformer_id, depends_on, definition,
                                  max_attempts, status, next_attempt_at)
  select v_job.id, d.step_id, d.transformer_id, d.depends_on, d.definition, d.max_attempts,
         case when cardinality(d.depends_on) = 0 then 'ready' else 'waiting' end,
         case when cardinality(d.depends_on) = 0 then
           greatest(now(), coalesce(p_start_at, now()))
           + make_interval(secs => (d.definition ->> 'delay_s')::float8) end
  from workflow.definition_steps(v_definition) d;

  perform workflow.append_event(v_job.id, 'job_created', p_to_status => 'pending',
                                p_detail => jsonb_build_object('workflow_version', v_version,
                                                               'origin', p_origin)
                                            || case when p_start_at > now() then
                                                 jsonb_build_object('start_at', p_start_at)
                                               else '{}'::jsonb end);
  return jsonb_build_object('job_id', v_job.id, 'status', v_job.status,
                            'created_at', v_job.created_at, 'existing', false,
                            'kick', case when p_check_kick then workflow.kick_needed() end);
end
$$;

-- Many starts in one transaction (POST /workflows/start with {"jobs": [...]}): each
-- through start_job, so each gets the same checks, idempotency and rate limit; a
-- refusal (PT4xx) is that item's result, the others go on. Any other error ends the
-- whole call. `index` is the caller's position of the item.
create or replace function workflow.start_jobs(
  p_user_id uuid, p_jobs jsonb, p_claims jsonb default '{}'::jsonb
)
returns table (index integer, result jsonb)
language plpgsql
set search_path = ''
as $$
declare
  j record;
  v_state text;
  v_message text;
  v_detail text;
  v_hint text;
begin
  for j in select e from jsonb_array_elements(p_jobs) e loop
    index := (j.e ->> 'index')::integer;
    begin
      result := workflow.start_job(p_user_id, j.e ->> 'workflow_id',
                                   (j.e ->> 'workflow_version')::integer, j.e -> 'input',
                                   j.e ->> 'idempotency_key', p_claims,
                                   p_start_at => (j.e ->> 'start_at')::timestamptz);
    exception when sqlstate 'PT400' or sqlstate 'PT401' or sqlstate 'PT404'
                   or sqlstate 'PT409' or sqlstate 'PT429' then
      get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                              v_detail = pg_exception_detail, v_hint = pg_exception_hint;
      result := jsonb_build_object('error', jsonb_build_object(
        'status', substr(v_state, 3)::integer, 'code', nullif(v_detail, ''),
        'message', v_message, 'hint', nullif(v_hint, '')));
    end;
    return next;
  end loop;
end
$$;

-- Starting a job from SQL (service role; database triggers, schedules and webhooks go
-- through it): in the caller's transaction, with start_job's bounds and idempotency,
-- for p_user_id or for nobody, on the workflow's current version. The orchestrator is
-- kicked through net.http_post, which sends only once the transaction commits: a
-- rolled-back start sends nothing and leaves nothing. No input_schema check here
-- (that is the API's, in Python): a SQL caller is trusted to pass what the workflow takes.
create or replace function workflow.start_workflow(
  p_workflow_id text, p_input jsonb default '{}'::jsonb, p_user_id uuid default null,
  p_idempotency_key text default null, p_origin jsonb default '{"type": "sql"}'::jsonb,
  p_start_at timestamptz default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
begin
  -- No kick_needed here: its shared lock would be held to the caller's commit (a user's
  -- row change, for a trigger), and end_pass would wait on it. One kick per transaction
  -- instead, sent after commit; a kicked pass that finds another alive ends at once.
  v_result := workflow.start_job(
    p_user_id, p_workflow_id,
    (select w.version from workflow.workflows w where w.id = p_workflow_id and w.is_active),
    p_input, p_idempotency_key, '{"role": "service_role"}'::jsonb, p_origin, p_start_at,
    p_check_kick => false);
  if not coalesce((v_result ->> 'existing')::boolean, false)
     and coalesce(current_setting('supaflow.kicked', true), '') <> txid_current()::text then
    perform set_config('supaflow.kicked', txid_current()::text, true);
    -- The reason the API's kicks give (shared.dispatch.KICK_REASON): a kicked pass.
    perform workflow.call_orchestrator('job started');
  end if;
  return v_result - 'kick';
end
$$;
