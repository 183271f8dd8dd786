-- An event's sequence number comes from the log itself: (job_id, seq) is unique
-- and indexed, and every caller holds the job's row lock, so max(seq) + 1 has no
-- gaps and no races. Appending an event no longer rewrites the job's row (it did
-- 5 to 11 times per job, each a new row version with its trigger and indexes).
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

alter table workflow.jobs drop column event_seq;
