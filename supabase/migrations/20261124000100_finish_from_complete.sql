-- complete_step hands back what finishing the job needs when it completed the
-- last step, so the executor that completed it finishes the job itself: one
-- round trip (finish_job) instead of two more from the orchestrator
-- (finishable_jobs, then finish_job). finishable_jobs stays for the passes that
-- sweep up jobs whose finisher died.
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
begin
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
                                'running', 'completed');

  with ready as (
    update workflow.job_steps d set status = 'ready', next_attempt_at = now()
    where d.job_id = p_job_id and d.status = 'waiting' and p_step_id = any(d.depends_on)
      and not exists (
        select 1 from workflow.job_steps u
        where u.job_id = p_job_id and u.step_id = any(d.depends_on) and u.status <> 'completed')
    returning d.step_id
  )
  select coalesce(array_agg(step_id), '{}') into v_ready from ready;
  if cardinality(v_ready) > 0 then
    perform workflow.append_event(p_job_id, 'steps_ready',
                                  p_detail => jsonb_build_object('steps', to_jsonb(v_ready)));
  end if;
  perform workflow.refresh_job_status(p_job_id);
  select to_jsonb(f) into v_finish from workflow.finishable_jobs(1, p_job_id) f;
  return jsonb_build_object(
    'accepted', true,
    'ready_steps', to_jsonb(v_ready),
    'finishable', v_finish is not null,
    'finish', v_finish);
end
$$;
