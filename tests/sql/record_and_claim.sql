-- record_and_claim: one transaction records an executor's outcomes and claims the steps
-- the completions made ready, when they run on that same executor, and only those.
begin;
select plan(8);

\set uid '00000000-0000-4000-8000-00000000f008'
insert into auth.users (id, email) values (:'uid', 'chain@example.test');
insert into workflow.workflows (id, definition) values ('tap-chain', jsonb_build_object(
  'output', '$.steps.b.output', 'steps', jsonb_build_array(
    :'step'::jsonb || '{"id": "a", "transformer": "transform", "depends_on": []}',
    :'step'::jsonb || '{"id": "b", "transformer": "transform", "depends_on": ["a"]}')));
select workflow.start_job(:'uid', 'tap-chain', 1, '{"n": 1}') ->> 'job_id' as here \gset
select workflow.start_job(:'uid', 'tap-chain', 1, '{"n": 2}') ->> 'job_id' as elsewhere \gset
select workflow.start_job(:'uid', 'tap-chain', 1, '{"n": 3}') ->> 'job_id' as stale \gset
update workflow.job_steps set next_attempt_at = '-infinity'
where job_id in (:'here', :'elsewhere', :'stale');
create temp table leases as select job_id, lease_token, payload from workflow.claim_steps(3)
  where job_id in (:'here', :'elsewhere', :'stale');

create function pg_temp.done(p_job uuid, p_token uuid, p_target text) returns jsonb
language sql as $$
  select workflow.record_and_claim(jsonb_build_array(jsonb_build_object(
    'job_id', p_job, 'step_id', 'a', 'lease_token', p_token, 'output', '{"n": 1}'::jsonb)),
    p_target)
$$;

select pg_temp.done(:'here', (select lease_token from leases where job_id = :'here'),
                    'execute-transform') as answer \gset
select is((:'answer'::jsonb -> 'recorded' -> 0 ->> 'outcome'), 'completed', 'the outcome is recorded');
select is((:'answer'::jsonb -> 'claimed' -> 0 ->> 'step_id'), 'b',
          'the step it made ready on this executor is claimed in the same call');
select is((select payload::jsonb -> 'output_mapping' from leases where job_id = :'here'), 'null'::jsonb,
          'a step with an unfinished sibling is not sent the output mapping');
select is((:'answer'::jsonb -> 'claimed' -> 0 ->> 'payload')::jsonb -> 'output_mapping',
          '"$.steps.b.output"'::jsonb, 'the job''s last unfinished step is');
select is((select status || ' ' || attempt from workflow.job_steps
           where job_id = :'here' and step_id = 'b'), 'running 1', 'leased, attempt 1');

select is(jsonb_array_length(pg_temp.done(:'elsewhere',
            (select lease_token from leases where job_id = :'elsewhere'), 'execute-webhook-call')
            -> 'claimed'), 0, 'a step that runs on another executor is not claimed');
select is((select status from workflow.job_steps where job_id = :'elsewhere' and step_id = 'b'),
          'ready', 'it stays ready for the orchestrator');
select is(jsonb_array_length(pg_temp.done(:'stale', gen_random_uuid(), 'execute-transform')
            -> 'claimed'), 0, 'a stale outcome claims nothing');

select * from finish();
rollback;
