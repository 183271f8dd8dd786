-- finish_job completes a job whose steps are all complete, once; anything else is refused.
begin;
select plan(8);

\set uid '00000000-0000-4000-8000-00000000e001'
insert into auth.users (id, email) values (:'uid', 'finishing@example.test');
insert into workflow.workflows (id, definition)
  values ('tap-finish', jsonb_build_object('output', '$.steps.a.output', 'steps', jsonb_build_array(
    :'step'::jsonb || '{"id": "a", "transformer": "transform", "depends_on": []}')));
select workflow.start_job(:'uid', 'tap-finish', 1, '{}') ->> 'job_id' as job \gset
select workflow.start_job(:'uid', 'tap-finish', 1, '{"n": 2}') ->> 'job_id' as big \gset

select is(workflow.finish_job(:'job', '{}') -> 'accepted', 'false'::jsonb,
          'a job with unfinished steps is not finished');

update workflow.job_steps set next_attempt_at = '-infinity' where job_id = :'job';
select lease_token as t from workflow.claim_steps(1) \gset
select workflow.complete_step(:'job', 'a', :'t', '{"r": 1}') -> 'finish' ->> 'job_id' as finishing \gset
select is(:'finishing'::text, :'job'::text, 'completing the last step hands back what finishing needs');
select is((select status from workflow.jobs where id = :'job'), 'running',
          'the job stays running until its final result is stored');
select is(workflow.finish_job(:'job', '{"r": 1}'), '{"accepted": true, "status": "completed"}'::jsonb,
          'finish_job completes it');
select results_eq(format($$select status, final_result, current_step_id from workflow.jobs
                          where id = %L$$, :'job'),
                  $$values ('completed', '{"r": 1}'::jsonb, null::text)$$, 'with its final result');
select is(workflow.finish_job(:'job', '{"r": 2}') -> 'accepted', 'false'::jsonb,
          'a second finish changes nothing');

update workflow.job_steps set next_attempt_at = '-infinity' where job_id = :'big';
select lease_token as t2 from workflow.claim_steps(1) \gset
select workflow.complete_step(:'big', 'a', :'t2', '{}') is not null as done \gset
select is(workflow.finish_job(:'big', jsonb_build_object('s', repeat('x', 1100000))),
          '{"accepted": true, "status": "failed"}'::jsonb, 'a final result over 1 MiB fails the job');
select matches((select error_message from workflow.jobs where id = :'big'),
               '^the final result is [0-9]+ bytes of JSON, over the 1 MiB', 'saying why');

select * from finish();
rollback;
