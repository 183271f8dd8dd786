-- record_outcomes: a batch of outcomes in one call, each fenced by its own lease.
begin;
select plan(12);

\set uid '00000000-0000-4000-8000-00000000b001'
insert into auth.users (id, email) values (:'uid', 'batch@example.test');
insert into workflow.workflows (id, definition) values ('tap-batch', jsonb_build_object(
  'output', '$.steps.a.output', 'steps', jsonb_build_array(jsonb_set(
    :'step'::jsonb || '{"id": "a", "transformer": "transform", "depends_on": []}',
    '{retry,max_retries}', '2'))));
select workflow.start_job(:'uid', 'tap-batch', 1, '{"n": 1}') ->> 'job_id' as j1 \gset
select workflow.start_job(:'uid', 'tap-batch', 1, '{"n": 2}') ->> 'job_id' as j2 \gset
select workflow.start_job(:'uid', 'tap-batch', 1, '{"n": 3}') ->> 'job_id' as j3 \gset
update workflow.job_steps set next_attempt_at = '-infinity' where job_id in (:'j1', :'j2', :'j3');
create temp table leases as select job_id, lease_token from workflow.claim_steps(3);
select is((select count(*)::int from leases where job_id in (:'j1', :'j2', :'j3')), 3, 'three steps claimed');

create temp table recorded as
  select * from workflow.record_outcomes((select jsonb_agg(o) from (
    select jsonb_build_object('job_id', job_id, 'step_id', 'a', 'lease_token', lease_token,
                              'output', jsonb_build_object('done', true)) o
      from leases where job_id = :'j1'
    union all
    select jsonb_build_object('job_id', job_id, 'step_id', 'a', 'lease_token', lease_token,
                              'error', 'flaky', 'retryable', true)
      from leases where job_id = :'j2'
    union all
    select jsonb_build_object('job_id', :'j3', 'step_id', 'a', 'lease_token', gen_random_uuid(),
                              'output', '{}'::jsonb)) x));

select is((select outcome from recorded where job_id = :'j1'), 'completed', 'a current lease completes');
select is((select outcome from recorded where job_id = :'j2'), 'retry_scheduled',
          'a retryable failure schedules a retry');
select is((select outcome from recorded where job_id = :'j3'), 'stale', 'a wrong token is stale');
select is((select status from workflow.job_steps where job_id = :'j3'), 'running',
          'and changes nothing for its step');
select ok((select finish::jsonb ->> 'input_data' = '{"n": 1}' from recorded where job_id = :'j1'),
          'the step that ends its job carries what finishing needs');
select is((select finish from recorded where job_id = :'j2'), null, 'the others carry nothing');


-- A last step sent with what its final result is built from finishes its job in the
-- same call: `final` from the executor, a result or an error.
select workflow.start_job(:'uid', 'tap-batch', 1, '{"n": 4}') ->> 'job_id' as j4 \gset
select workflow.start_job(:'uid', 'tap-batch', 1, '{"n": 5}') ->> 'job_id' as j5 \gset
update workflow.job_steps set next_attempt_at = '-infinity' where job_id in (:'j4', :'j5');
create temp table leases2 as select job_id, lease_token, payload from workflow.claim_steps(2)
  where job_id in (:'j4', :'j5');
create temp table finished as
  select * from workflow.record_outcomes((select jsonb_agg(jsonb_build_object(
    'job_id', job_id, 'step_id', 'a', 'lease_token', lease_token, 'output', '{"v": 1}'::jsonb,
    'final', case when job_id = :'j4' then '{"final_result": {"v": 1}}'::jsonb
                  else '{"error": "output mapping: no such path"}'::jsonb end))
    from leases2));
select ok((select bool_and(payload::jsonb -> 'output_mapping' = '"$.steps.a.output"') from leases2),
          'the claim of a job''s last unfinished step carries its output mapping');
select is((select job_status || ' ' || coalesce(finish, '-') from finished where job_id = :'j4'),
          'completed -', 'a final result finishes the job in the same call, nothing left to finish');
select is((select status || ' ' || final_result::text from workflow.jobs where id = :'j4'),
          'completed {"v": 1}', 'with that result stored');
select is((select status || ': ' || error_message from workflow.jobs where id = :'j5'),
          'failed: output mapping: no such path', 'a final error fails the job');

select workflow.start_job(:'uid', 'tap-batch', 1, '{"n": 6}') ->> 'job_id' as j6 \gset
update workflow.job_steps set next_attempt_at = '-infinity' where job_id = :'j6';
select lease_token as t6 from workflow.claim_steps(1) where job_id = :'j6' \gset
select workflow.record_outcomes(jsonb_build_array(jsonb_build_object(
  'job_id', :'j6', 'step_id', 'a', 'lease_token', gen_random_uuid(), 'output', '{}'::jsonb,
  'final', '{"final_result": "forged"}'::jsonb)));
select is((select status || ' ' || coalesce(final_result::text, '-') from workflow.jobs
           where id = :'j6'), 'running -', 'a stale outcome carrying a final result finishes nothing');

select * from finish();
rollback;
