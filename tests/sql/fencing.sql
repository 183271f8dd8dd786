-- Leases fence results: only the holder of the current lease records an outcome, once.
begin;
select plan(8);

\set uid '00000000-0000-4000-8000-00000000f001'
insert into auth.users (id, email) values (:'uid', 'fencing@example.test');
insert into workflow.workflows (id, definition)
  values ('tap-fencing', jsonb_build_object('output', '$.steps.a.output', 'steps', jsonb_build_array(
    :'step'::jsonb || '{"id": "a", "transformer": "transform", "depends_on": []}')));
select workflow.start_job(:'uid', 'tap-fencing', 1, '{}') ->> 'job_id' as job \gset
update workflow.job_steps set next_attempt_at = '-infinity' where job_id = :'job';
select lease_token as first_token, attempt from workflow.claim_steps(1) \gset

select is(:attempt, 1, 'the claim is attempt 1');
select is((select status from workflow.job_steps where job_id = :'job'), 'running',
          'the claim leases the step');

update workflow.job_steps set lease_expires_at = now() - interval '1 s' where job_id = :'job';
select ok(workflow.recover_expired_leases(1000) >= 1,
          'an expired lease becomes a failed, retryable attempt');
update workflow.job_steps set next_attempt_at = '-infinity' where job_id = :'job';
select lease_token as second_token from workflow.claim_steps(1) \gset

select is(workflow.complete_step(:'job', 'a', :'first_token', '{"late": true}'),
          '{"accepted": false, "reason": "stale lease"}'::jsonb, 'the expired lease changes nothing');
select is(workflow.complete_step(:'job', 'a', :'second_token', '{"ok": 1}') -> 'accepted',
          'true'::jsonb, 'the current lease records the output');
select is(workflow.complete_step(:'job', 'a', :'second_token', '{"ok": 2}') -> 'accepted',
          'false'::jsonb, 'a duplicate delivery changes nothing');
select is(workflow.fail_step(:'job', 'a', :'second_token', 'late failure', false) -> 'accepted',
          'false'::jsonb, 'nor does a late failure');
select results_eq(
  format($$select status, attempt, output from workflow.job_steps where job_id = %L$$, :'job'),
  $$values ('completed', 2, '{"ok": 1}'::jsonb)$$, 'the output is written once, by attempt 2');

select * from finish();
rollback;
