-- complete_step makes a dependent ready only when all of its dependencies are complete.
begin;
select plan(6);

\set uid '00000000-0000-4000-8000-00000000d001'
insert into auth.users (id, email) values (:'uid', 'dependents@example.test');
insert into workflow.workflows (id, definition) values ('tap-diamond', jsonb_build_object(
  'output', '$.steps.d.output', 'steps', jsonb_build_array(
    :'step'::jsonb || '{"id": "a", "transformer": "transform", "depends_on": []}',
    :'step'::jsonb || '{"id": "b", "transformer": "transform", "depends_on": ["a"]}',
    :'step'::jsonb || '{"id": "c", "transformer": "transform", "depends_on": ["a"]}',
    :'step'::jsonb || '{"id": "d", "transformer": "transform", "depends_on": ["b", "c"]}')));
select workflow.start_job(:'uid', 'tap-diamond', 1, '{}') ->> 'job_id' as job \gset

create temp view steps as
  select step_id, status from workflow.job_steps where job_id = :'job' order by step_id;

select results_eq('select * from steps',
  $$values ('a', 'ready'), ('b', 'waiting'), ('c', 'waiting'), ('d', 'waiting')$$,
  'only the root starts ready');

update workflow.job_steps set next_attempt_at = '-infinity' where job_id = :'job' and step_id = 'a';
select lease_token as ta from workflow.claim_steps(1) \gset
select is(workflow.complete_step(:'job', 'a', :'ta', '{"n": 1}') -> 'ready_steps',
          '["b", "c"]'::jsonb, 'completing a readies b and c');

update workflow.job_steps set next_attempt_at = '-infinity' where job_id = :'job' and step_id = 'b';
select lease_token as tb from workflow.claim_steps(1) \gset
select is(workflow.complete_step(:'job', 'b', :'tb', '{}') -> 'ready_steps', '[]'::jsonb,
          'd still waits for c');
select is((select status from steps where step_id = 'd'), 'waiting', 'd is waiting');

update workflow.job_steps set next_attempt_at = '-infinity' where job_id = :'job' and step_id = 'c';
select lease_token as tc from workflow.claim_steps(1) \gset
select is(workflow.complete_step(:'job', 'c', :'tc', '{}') -> 'ready_steps', '["d"]'::jsonb,
          'completing c readies d');
select is((select step_data from workflow.jobs where id = :'job'),
          '{"a": {"n": 1}, "b": {}, "c": {}}'::jsonb, 'each output lands in step_data');

select * from finish();
rollback;
