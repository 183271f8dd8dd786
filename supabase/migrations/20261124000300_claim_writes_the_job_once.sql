-- Claiming a step wrote its job's row twice (current_step_id, then the status
-- change to running); transition_job now takes the step and writes both at once.

drop function workflow.transition_job(uuid, text, jsonb);

-- Moves a job to a new status (caller holds the job's row lock) and records it.
-- p_current_step, when given, becomes current_step_id in the same write, also when
-- the status stays as it is. A completed job has no current step.
create function workflow.transition_job(
  p_job_id uuid, p_to text, p_detail jsonb default '{}'::jsonb, p_current_step text default null
) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_from text;
  v_step text;
begin
  select status, current_step_id into v_from, v_step from workflow.jobs where id = p_job_id;
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
    state_history = state_history || jsonb_build_array(
      jsonb_build_object('status', p_to, 'at', now()) || coalesce(p_detail, '{}'::jsonb))
  where id = p_job_id;
  perform workflow.append_event(p_job_id, 'job_' || p_to, p_from_status => v_from,
                                p_to_status => p_to, p_detail => p_detail);
end
$$;

revoke execute on function workflow.transition_job(uuid, text, jsonb, text)
  from public, anon, authenticated;
grant execute on function workflow.transition_job(uuid, text, jsonb, text) to service_role;

-- Claim up to p_limit runnable steps: ready, due, and not leased. Jobs are
-- locked first (SKIP LOCKED), then their steps, so claims never wait.
create or replace function workflow.claim_steps(p_limit integer default 10)
returns table (
  job_id uuid, step_id text, attempt integer, lease_token uuid, lease_expires_at timestamptz,
  timeout_s integer, inputs jsonb, input_data jsonb, step_data jsonb,
  transformer_id text, transformer_type text, transformer_config jsonb, target_function text
)
language plpgsql
set search_path = ''
as $$
declare
  v_ids bigint[];
  r record;
begin
  with candidates as (
    select s.id, s.job_id from workflow.job_steps s
    where s.status = 'ready' and s.next_attempt_at <= now()
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
        secs => coalesce((s.definition ->> 'timeout_s')::integer, 300) + 15),
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
           coalesce((s.definition ->> 'timeout_s')::integer, 300),
           coalesce(s.definition -> 'inputs', '{}'::jsonb),
           j.input_data, j.step_data,
           s.transformer_id, t.type, t.config, t.target_function
    from workflow.job_steps s
    join workflow.jobs j on j.id = s.job_id
    left join workflow.transformers t on t.id = s.transformer_id
    where s.id = any(v_ids);
end
$$;
