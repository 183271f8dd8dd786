-- The state machine. Each function is one transaction called over RPC by the
-- service role. Lock order everywhere: the job row first, then its step rows,
-- so concurrent orchestrators and executors never deadlock.

-- Moves a job to a new status (caller holds the job's row lock) and records it.
-- p_current_step, when given, becomes current_step_id in the same write, also when
-- the status stays as it is; p_final_result is stored with a change of status (the
-- move to completed). A completed job has no current step.
create or replace function workflow.transition_job(
  p_job_id uuid, p_to text, p_detail jsonb default '{}'::jsonb, p_current_step text default null,
  p_final_result jsonb default null
) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_from text;
  v_step text;
  v_created timestamptz;
begin
  select status, current_step_id, created_at into v_from, v_step, v_created
  from workflow.jobs where id = p_job_id;
  if v_from is not distinct from p_to then
    if p_current_step is not null and p_current_step is distinct from v_step then
      update workflow.jobs set current_step_id = p_current_step where id = p_job_id;
    end if;
    return;
  end if;
  update workflow.jobs set
    status = p_to,
    current_step_id = case when p_to = 'completed' then null
                           else coalesce(p_current_step, current_step_id) end,
    started_at = case when p_to = 'running' then coalesce(started_at, now()) else started_at end,
    completed_at = case when p_to in ('completed', 'failed', 'cancelled') then now() end,
    next_retry_at = case when p_to = 'awaiting_retry' then next_retry_at end,
    final_result = coalesce(p_final_result, final_result),
    state_history = state_history || jsonb_build_array(
      jsonb_build_object('status', p_to, 'at', now()) || coalesce(p_detail, '{}'::jsonb))
  where id = p_job_id;
  perform workflow.append_event(p_job_id, 'job_' || p_to, p_from_status => v_from,
    p_to_status => p_to, p_detail => coalesce(p_detail, '{}'::jsonb) || case
      when p_to in ('completed', 'failed', 'cancelled') then jsonb_build_object(
        'duration_s', round(extract(epoch from now() - v_created)::numeric, 3))
      else '{}'::jsonb end);
end
$$;

-- After a step changes: running while anything runs or is due, awaiting_retry
-- while the only work left waits for a retry time.
create or replace function workflow.refresh_job_status(p_job_id uuid) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_status text;
  v_next timestamptz;
begin
  select status into v_status from workflow.jobs where id = p_job_id;
  if v_status in ('completed', 'failed', 'cancelled') then
    return;
  end if;
  if exists (select 1 from workflow.job_steps
             where job_id = p_job_id
               and (status = 'running' or (status = 'ready' and next_attempt_at <= now()))) then
    if v_status <> 'pending' then
      perform workflow.transition_job(p_job_id, 'running');
    end if;
    return;
  end if;
  select min(next_attempt_at) into v_next from workflow.job_steps
  where job_id = p_job_id and status = 'ready';
  if v_next is not null then
    update workflow.jobs set next_retry_at = v_next where id = p_job_id;
    perform workflow.transition_job(p_job_id, 'awaiting_retry',
                                    jsonb_build_object('next_retry_at', v_next));
  end if;
end
$$;

-- Claim up to p_limit runnable steps: ready, due, and not leased. Jobs are
-- locked first (SKIP LOCKED), then their steps, so claims never wait. A pass that
-- passes its id renews its heartbeat (alive for p_alive_s more seconds) in the same call
-- (p_limit 0: only that).
-- An executor that just completed steps claims what they made ready for itself:
-- p_job_ids and p_target_function narrow the claim to those jobs and that executor.
-- What the step reads (its input mapping, the job's input and step outputs, the
-- transformer's config) comes as one JSON text per row, `payload`: the caller
-- decodes each row on its own, so one row it cannot decode fails only its step.
create or replace function workflow.claim_steps(
  p_limit integer default 10, p_pass_id uuid default null, p_alive_s float8 default 0,
  p_job_ids uuid[] default null, p_target_function text default null
)
returns table (
  job_id uuid, step_id text, attempt integer, lease_token uuid, lease_expires_at timestamptz,
  timeout_s integer, transformer_id text, transformer_type text, target_function text,
  payload text
)
language plpgsql
set search_path = ''
as $$
declare
  v_ids bigint[];
  r record;
begin
  if p_pass_id is not null then
    insert into workflow.orchestrator_passes (id, alive_until)
    values (p_pass_id, now() + make_interval(secs => p_alive_s))
    on conflict (id) do update set alive_until = excluded.alive_until;
  end if;
  if p_limit < 1 then
    return;  -- the heartbeat alone: a pass at its concurrency limit is still alive
  end if;
  with candidates as (
    select s.id, s.job_id from workflow.job_steps s
    where s.status = 'ready' and s.next_attempt_at <= now()
      and (p_job_ids is null or s.job_id = any(p_job_ids))
      and (p_target_function is null or exists (
        select 1 from workflow.transformers t
        where t.id = s.transformer_id and t.target_function = p_target_function))
    order by s.next_attempt_at, s.id
    limit greatest(p_limit, 1) * 2
  ), locked_jobs as (
    select j.id from workflow.jobs j
    where j.id = any(array(select c.job_id from candidates c))
      and j.status in ('pending', 'running', 'awaiting_retry')
    order by j.id
    for update skip locked
  ), locked_steps as (
    select s.id from workflow.job_steps s
    where s.id = any(array(select c.id from candidates c))
      and s.job_id = any(array(select l.id from locked_jobs l))
      and s.status = 'ready' and s.next_attempt_at <= now()
    order by s.next_attempt_at, s.id
    limit greatest(p_limit, 1)
    for update skip locked
  )
  select array_agg(id) into v_ids from locked_steps;
  if v_ids is null then
    return;
  end if;

  for r in
    update workflow.job_steps s set
      status = 'running',
      attempt = s.attempt + 1,
      lease_token = gen_random_uuid(),
      lease_expires_at = now() + make_interval(
        secs => (s.definition ->> 'timeout_s')::numeric::integer + 15),
      started_at = now(),
      completed_at = null
    where s.id = any(v_ids)
    returning s.job_id, s.step_id, s.attempt, s.lease_expires_at
  loop
    perform workflow.append_event(r.job_id, 'step_started', r.step_id, r.attempt, 'ready',
                                  'running',
                                  jsonb_build_object('lease_expires_at', r.lease_expires_at));
    perform workflow.transition_job(r.job_id, 'running', p_current_step => r.step_id);
  end loop;

  return query
    select s.job_id, s.step_id, s.attempt, s.lease_token, s.lease_expires_at,
           (s.definition ->> 'timeout_s')::numeric::integer,
           s.transformer_id, t.type, t.target_function,
           jsonb_build_object(
             'inputs', s.definition -> 'inputs',
             'input_data', j.input_data, 'step_data', j.step_data,
             'transformer_config', coalesce(t.config, '{}'::jsonb),
             -- the job's last unfinished step: its executor builds the final result
             'output_mapping', case when not exists (
                 select 1 from workflow.job_steps o
                 where o.job_id = s.job_id and o.id <> s.id and o.status <> 'completed')
               then (select v.definition -> 'output' from workflow.workflow_versions v
                     where v.workflow_id = j.workflow_id and v.version = j.workflow_version)
               end)::text
    from workflow.job_steps s
    join workflow.jobs j on j.id = s.job_id
    left join workflow.transformers t on t.id = s.transformer_id
    where s.id = any(v_ids);
end
$$;

-- Locks the job, then the step, and checks the caller holds the current lease.
-- Returns the step when it does, null when the lease is stale.
create or replace function workflow.lock_leased_step(
  p_job_id uuid, p_step_id text, p_lease_token uuid
) returns workflow.job_steps
language plpgsql
set search_path = ''
as $$
declare
  v_step workflow.job_steps;
begin
  perform 1 from workflow.jobs where id = p_job_id for update;
  select * into v_step from workflow.job_steps
  where job_id = p_job_id and step_id = p_step_id
  for update;
  if not found or v_step.status <> 'running' or v_step.lease_token is distinct from p_lease_token then
    return null;
  end if;
  return v_step;
end
$$;

-- What an attempt's end records for the metrics: how long it ran and its transformer.
create or replace function workflow.attempt_detail(p_step workflow.job_steps) returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'transformer_id', p_step.transformer_id,
    'duration_s', round(extract(epoch from now() - coalesce(p_step.started_at, now()))::numeric, 3))
$$;

-- Complete a step: record its output once, make dependents ready. When every
-- step is complete the job stays `running` until finish_job stores final_result
-- (built in Python from the output mapping); `finish` hands back what that needs,
-- so the executor that completed the last step finishes the job in one more call.
-- An output over the bounds (value_problem) fails the step for good instead.
create or replace function workflow.complete_step(
  p_job_id uuid, p_step_id text, p_lease_token uuid, p_output jsonb
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_step workflow.job_steps;
  v_ready text[];
  v_finish jsonb;
  v_problem text := workflow.value_problem(p_output);
begin
  if v_problem is not null then
    return workflow.fail_step(p_job_id, p_step_id, p_lease_token,
                              'the step''s output is ' || v_problem, false, 'output');
  end if;
  v_step := workflow.lock_leased_step(p_job_id, p_step_id, p_lease_token);
  if v_step.id is null then
    return jsonb_build_object('accepted', false, 'reason', 'stale lease');
  end if;
  update workflow.job_steps set
    status = 'completed', output = coalesce(p_output, 'null'::jsonb), error = null,
    completed_at = now(), lease_token = null, lease_expires_at = null
  where id = v_step.id;
  update workflow.jobs set
    step_data = step_data || jsonb_build_object(p_step_id, coalesce(p_output, 'null'::jsonb))
  where id = p_job_id;
  perform workflow.append_event(p_job_id, 'step_completed', p_step_id, v_step.attempt,
                                'running', 'completed', workflow.attempt_detail(v_step));

  with ready as (
    update workflow.job_steps d set status = 'ready',
      next_attempt_at = now() + make_interval(secs => (d.definition ->> 'delay_s')::float8)
    where d.job_id = p_job_id and d.status = 'waiting' and p_step_id = any(d.depends_on)
      and not exists (
        select 1 from workflow.job_steps u
        where u.job_id = p_job_id and u.step_id = any(d.depends_on) and u.status <> 'completed')
    returning d.step_id
  )
  select coalesce(array_agg(step_id order by step_id), '{}') into v_ready from ready;
  if cardinality(v_ready) > 0 then
    perform workflow.append_event(p_job_id, 'steps_ready',
                                  p_detail => jsonb_build_object('steps', to_jsonb(v_ready)));
  end if;
  perform workflow.refresh_job_status(p_job_id);
  select to_jsonb(f) into v_finish from workflow.finishable_jobs(1, p_job_id) f;
  return jsonb_build_object(
    'accepted', true,
    'ready_steps', to_jsonb(v_ready),
    'finish', v_finish);
end
$$;

-- The delay before attempt n+1: exponential, capped, with +-jitter (the policy is
-- whole and bounded: workflow.definition_problem).
create or replace function workflow.retry_delay(p_retry jsonb, p_attempt integer)
returns interval
language sql
volatile
set search_path = ''
as $$
  select make_interval(secs => greatest(0.05,
    least((p_retry ->> 'max_delay_s')::float8,
          (p_retry ->> 'initial_delay_s')::float8
          * power((p_retry ->> 'multiplier')::float8, least(greatest(p_attempt - 1, 0), 50)))
    * (1 + (p_retry ->> 'jitter')::float8 * (2 * random() - 1))))
$$;

-- Ends every step that has not finished; a running one's late result is then stale.
create or replace function workflow.cancel_unfinished_steps(p_job_id uuid) returns void
language sql
set search_path = ''
as $$
  update workflow.job_steps set status = 'cancelled', lease_token = null,
    lease_expires_at = null, completed_at = now()
  where job_id = p_job_id and status in ('waiting', 'ready', 'running')
$$;

-- Fail a job: cancel its unfinished steps, record why.
create or replace function workflow.fail_job(p_job_id uuid, p_message text) returns void
language plpgsql
set search_path = ''
as $$
begin
  perform 1 from workflow.jobs where id = p_job_id for update;
  perform workflow.cancel_unfinished_steps(p_job_id);
  update workflow.jobs set error_message = p_message where id = p_job_id;
  perform workflow.transition_job(p_job_id, 'failed', jsonb_build_object('error', p_message));
end
$$;

-- Fail one attempt: retry with backoff while attempts remain and the error is
-- retryable; otherwise fail the job.
create or replace function workflow.fail_step(
  p_job_id uuid, p_step_id text, p_lease_token uuid, p_error text, p_retryable boolean,
  p_error_type text default 'executor'
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_step workflow.job_steps;
  v_at timestamptz;
  v_error text := left(coalesce(p_error, 'unknown error'), 4000);
  v_type text := left(coalesce(p_error_type, 'executor'), 40);
begin
  v_step := workflow.lock_leased_step(p_job_id, p_step_id, p_lease_token);
  if v_step.id is null then
    return jsonb_build_object('accepted', false, 'reason', 'stale lease');
  end if;
  if p_retryable and v_step.attempt < v_step.max_attempts then
    v_at := now() + workflow.retry_delay(v_step.definition -> 'retry', v_step.attempt);
    update workflow.job_steps set status = 'ready', next_attempt_at = v_at, error = v_error,
      error_type = v_type, lease_token = null, lease_expires_at = null
    where id = v_step.id;
    update workflow.jobs set retry_count = retry_count + 1, next_retry_at = v_at
    where id = p_job_id;
    perform workflow.append_event(p_job_id, 'step_retry_scheduled', p_step_id, v_step.attempt,
      'running', 'ready', workflow.attempt_detail(v_step) || jsonb_build_object(
        'error', v_error, 'error_type', v_type, 'next_attempt_at', v_at));
    perform workflow.refresh_job_status(p_job_id);
    return jsonb_build_object('accepted', true, 'retry_at', v_at);
  end if;
  update workflow.job_steps set status = 'failed', error = v_error, error_type = v_type,
    completed_at = now(), lease_token = null, lease_expires_at = null
  where id = v_step.id;
  perform workflow.append_event(p_job_id, 'step_failed', p_step_id, v_step.attempt,
    'running', 'failed', workflow.attempt_detail(v_step) || jsonb_build_object(
      'error', v_error, 'error_type', v_type, 'retryable', p_retryable));
  perform workflow.fail_job(p_job_id, format('step %s failed (attempt %s of %s): %s',
    p_step_id, v_step.attempt, v_step.max_attempts, v_error));
  return jsonb_build_object('accepted', true, 'job_failed', true);
end
$$;

-- Expired leases become failed, retryable attempts: a dead executor or
-- orchestrator loses nothing.
create or replace function workflow.recover_expired_leases(p_limit integer default 100)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  r record;
  v_count integer := 0;
begin
  for r in
    select s.job_id, s.step_id, s.lease_token from workflow.job_steps s
    where s.status = 'running' and s.lease_expires_at < now()
    order by s.lease_expires_at
    limit p_limit
  loop
    perform 1 from workflow.jobs where id = r.job_id for update skip locked;
    if found and (workflow.fail_step(r.job_id, r.step_id, r.lease_token,
        'lease expired: the executor did not report in time', true,
        'lease_expired') ->> 'accepted')::boolean then
      v_count := v_count + 1;
    end if;
  end loop;
  return v_count;
end
$$;

-- Jobs whose steps are all complete but whose final result is not stored yet
-- (complete_step returns its row; scheduled passes sweep up the jobs whose
-- finisher died before finishing them). Like claim_steps, what the final result
-- is built from comes as JSON text, `payload`, decoded row by row.
create or replace function workflow.finishable_jobs(
  p_limit integer default 50, p_job_id uuid default null
)
returns table (job_id uuid, payload text)
language sql
stable
set search_path = ''
as $$
  select j.id, jsonb_build_object(
           'input_data', j.input_data, 'step_data', j.step_data,
           'output_mapping', v.definition -> 'output')::text
  from workflow.jobs j
  join workflow.workflow_versions v
    on v.workflow_id = j.workflow_id and v.version = j.workflow_version
  where j.status = 'running'
    and (p_job_id is null or j.id = p_job_id)
    and not exists (select 1 from workflow.job_steps s
                    where s.job_id = j.id and s.status <> 'completed')
  limit p_limit
$$;

-- Store the final result and complete the job; a final result over the bounds
-- (value_problem: an output mapping may combine several outputs) fails the job instead.
create or replace function workflow.finish_job(p_job_id uuid, p_final_result jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_status text;
  v_problem text;
begin
  select status into v_status from workflow.jobs where id = p_job_id for update;
  if v_status is distinct from 'running' or exists (
      select 1 from workflow.job_steps where job_id = p_job_id and status <> 'completed') then
    return jsonb_build_object('accepted', false, 'status', v_status);
  end if;
  v_problem := workflow.value_problem(p_final_result);
  if v_problem is not null then
    perform workflow.fail_job(p_job_id, 'the final result is ' || v_problem);
    return jsonb_build_object('accepted', true, 'status', 'failed');
  end if;
  perform workflow.transition_job(p_job_id, 'completed',
                                  p_final_result => coalesce(p_final_result, 'null'::jsonb));
  return jsonb_build_object('accepted', true, 'status', 'completed');
end
$$;

-- Record a batch of attempts' outcomes (an executor's, or the orchestrator's for
-- steps it could not dispatch) in one transaction: each through complete_step or
-- fail_step, so each is fenced by its own lease token and a stale one changes
-- nothing for the others. Jobs are taken in id order, the order every caller locks
-- them in, so concurrent batches never deadlock. One row that raises is reported
-- `unrecorded` (its lease decides) without undoing the rest. An outcome that completes
-- its job's last step may carry `final` (the executor built it: claim_steps gave it
-- the output mapping), and the job is finished here (`job_status`); without one,
-- `finish` hands back what finish_jobs needs.
create or replace function workflow.record_outcomes(p_outcomes jsonb)
returns table (job_id uuid, step_id text, outcome text, finish text, job_status text)
language plpgsql
set search_path = ''
as $$
declare
  o record;
  v_result jsonb;
begin
  for o in
    select (e ->> 'job_id')::uuid as job_id, e ->> 'step_id' as step_id,
           (e ->> 'lease_token')::uuid as lease_token, e -> 'output' as output,
           e ? 'error' as failed, e ->> 'error' as error,
           coalesce((e ->> 'retryable')::boolean, true) as retryable,
           e ->> 'error_type' as error_type, e -> 'final' as final
    from jsonb_array_elements(p_outcomes) e
    order by 1, 2
  loop
    job_id := o.job_id;
    step_id := o.step_id;
    finish := null;
    job_status := null;
    begin
      if o.failed then
        v_result := workflow.fail_step(o.job_id, o.step_id, o.lease_token, o.error, o.retryable,
                                       o.error_type);
      else
        v_result := workflow.complete_step(o.job_id, o.step_id, o.lease_token, o.output);
      end if;
      outcome := case
        when not (v_result ->> 'accepted')::boolean then 'stale'
        when v_result ? 'retry_at' then 'retry_scheduled'
        when coalesce((v_result ->> 'job_failed')::boolean, false) then 'failed'
        else 'completed' end;
      finish := v_result -> 'finish' ->> 'payload';
      if finish is not null and jsonb_typeof(o.final) = 'object' then
        begin  -- the executor built the final result already: finish the job here
          job_status := workflow.finish_one(o.job_id, o.final);
          finish := null;
        exception when others then  -- the step stays completed; finish_jobs or the sweep ends the job
          raise warning 'record_outcomes: finishing job %: %', o.job_id, sqlerrm;
        end;
      end if;
    exception when others then
      raise warning 'record_outcomes: job % step %: %', o.job_id, o.step_id, sqlerrm;
      outcome := 'unrecorded';
    end;
    return next;
  end loop;
end
$$;

-- An executor's one call per group of ended steps: record their outcomes and, in the
-- same transaction, claim the steps their completions made ready that run on this
-- executor too (p_target_function), so a chain of steps never goes back to the
-- orchestrator, and no one else can see those steps ready in between.
create or replace function workflow.record_and_claim(
  p_outcomes jsonb, p_target_function text, p_limit integer default 32
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_recorded jsonb;
  v_jobs uuid[];
  v_claimed jsonb;
begin
  select coalesce(jsonb_agg(to_jsonb(r)), '[]'::jsonb) into v_recorded
  from workflow.record_outcomes(p_outcomes) r;
  select array_agg(distinct (r ->> 'job_id')::uuid) into v_jobs
  from jsonb_array_elements(v_recorded) r
  where r ->> 'outcome' = 'completed' and r ->> 'finish' is null and r ->> 'job_status' is null;
  if v_jobs is not null then
    begin  -- a claim that fails leaves the outcomes recorded; the orchestrator claims instead
      select jsonb_agg(to_jsonb(c)) into v_claimed
      from workflow.claim_steps(p_limit, null, 0, v_jobs, p_target_function) c;
    exception when others then
      raise warning 'record_and_claim: claiming failed: %', sqlerrm;
      v_claimed := null;
    end;
  end if;
  return jsonb_build_object('recorded', v_recorded, 'claimed', coalesce(v_claimed, '[]'::jsonb));
end
$$;

-- Finish one job whose steps are all complete, from p_entry built in Python from the
-- output mapping: `final_result` completes it, `error` fails it. The new status, or
-- null when another finisher ended it first.
create or replace function workflow.finish_one(p_job_id uuid, p_entry jsonb) returns text
language plpgsql
set search_path = ''
as $$
declare
  v_status text;
  v_result jsonb;
begin
  if p_entry ? 'error' then
    select j.status into v_status from workflow.jobs j where j.id = p_job_id for update;
    if v_status = 'running' then
      perform workflow.fail_job(p_job_id, p_entry ->> 'error');
      return 'failed';
    end if;
    return null;
  end if;
  v_result := workflow.finish_job(p_job_id, p_entry -> 'final_result');
  return case when (v_result ->> 'accepted')::boolean then v_result ->> 'status' end;
end
$$;

-- Finish a batch of jobs (finish_one each), in id order: the lock order.
create or replace function workflow.finish_jobs(p_jobs jsonb)
returns table (job_id uuid, status text)
language plpgsql
set search_path = ''
as $$
declare
  r record;
begin
  for r in select (e ->> 'job_id')::uuid as id, e from jsonb_array_elements(p_jobs) e order by 1 loop
    job_id := r.id;
    status := workflow.finish_one(r.id, r.e);
    return next;
  end loop;
end
$$;

create or replace function workflow.cancel_job(p_job_id uuid, p_claims jsonb) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_job workflow.jobs;
begin
  select * into v_job from workflow.jobs where id = p_job_id for update;
  if not found or not workflow.claims_control(p_claims, v_job.user_id, v_job.tenant_id) then
    raise sqlstate 'PT404' using message = format('job %s not found', p_job_id);
  end if;
  if v_job.status in ('completed', 'failed', 'cancelled') then
    return jsonb_build_object('job_id', p_job_id, 'cancelled', false, 'status', v_job.status);
  end if;
  perform workflow.cancel_unfinished_steps(p_job_id);
  perform workflow.transition_job(p_job_id, 'cancelled',
                                  jsonb_build_object('by', workflow.claims_actor(p_claims)));
  return jsonb_build_object('job_id', p_job_id, 'cancelled', true, 'status', 'cancelled');
end
$$;

-- A kicked pass begins only if no other pass is alive, and then is alive itself (its
-- heartbeat, for p_alive_s). A burst of starts that found no pass alive sends a burst
-- of kicks: the first pass to begin takes the work, the others end at once, instead
-- of each claiming for its whole budget. The lock makes two beginning passes take
-- turns, so only one wins; a job a loser was kicked for is found by the winner (it
-- committed before the kick was sent).
create or replace function workflow.begin_pass(p_pass_id uuid, p_alive_s float8) returns boolean
language plpgsql
set search_path = ''
as $$
begin
  perform pg_advisory_xact_lock(hashtextextended('supaflow: a pass begins', 0));
  if exists (select 1 from workflow.orchestrator_passes
             where alive_until > now() and id <> p_pass_id) then
    return false;
  end if;
  insert into workflow.orchestrator_passes (id, alive_until)
  values (p_pass_id, now() + make_interval(secs => p_alive_s))
  on conflict (id) do update set alive_until = excluded.alive_until;
  return true;
end
$$;

-- A pass stops: once the starts that saw it alive have committed (their shared
-- lock, kick_needed), its heartbeat goes, and the caller claims one last time.
-- Heartbeats of passes that died without ending are cleared on the way.
create or replace function workflow.end_pass(p_pass_id uuid) returns void
language plpgsql
set search_path = ''
as $$
begin
  perform pg_advisory_xact_lock(hashtextextended('supaflow: a pass ends', 0));
  delete from workflow.orchestrator_passes
  where id = p_pass_id or alive_until < now() - interval '1 minute';
  insert into workflow.orchestrator_last_pass (ended_at) values (now())
  on conflict (id) do update set ended_at = excluded.ended_at;
end
$$;

-- Seconds until the next retry is due: lets an orchestrator with time left wait
-- for it instead of leaving it to the next cron tick.
create or replace function workflow.next_due_in() returns float8
language sql
stable
set search_path = ''
as $$
  select greatest(0, extract(epoch from next_at - now()))::float8
  from (select min(next_attempt_at) as next_at from workflow.job_steps
        where status = 'ready') due
  where next_at is not null
$$;

-- Waits up to p_wait_s (at most 0.2 s) for a step to be ready and due; true when one
-- is. An idle pass waits here instead of polling claim_steps over HTTP: the check is
-- an index probe every millisecond inside Postgres, so a new job's first step is
-- seen about a millisecond after its start commits. (Each statement of a function
-- sees what has committed since the one before.)
create or replace function workflow.wait_for_ready(p_wait_s float8) returns boolean
language plpgsql
volatile
set search_path = ''
as $$
declare
  v_until timestamptz := clock_timestamp() + make_interval(secs => least(greatest(p_wait_s, 0), 0.2));
  v_now timestamptz;
begin
  loop
    v_now := clock_timestamp();  -- a variable, so the probe is an index range, not a filter
    if exists (select 1 from workflow.job_steps
               where status = 'ready' and next_attempt_at <= v_now) then
      return true;
    end if;
    exit when v_now >= v_until;
    perform pg_sleep(0.001);
  end loop;
  return false;
end
$$;

-- The built-in no-I/O transformer: reshapes data with the mapping language.
insert into workflow.transformers (id, type, description, config, target_function)
values ('transform', 'transform', 'Builds its output from its inputs; no I/O.', '{}',
        'execute-transform')
on conflict (id) do nothing;
