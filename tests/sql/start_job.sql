-- start_job checks what it is given, whoever calls it (the API, a trigger, a schedule).
begin;
select plan(9);

\set uid '00000000-0000-4000-8000-00000000a001'
insert into auth.users (id, email) values (:'uid', 'start@example.test');
insert into workflow.workflows (id, definition)
  values ('tap-start', jsonb_build_object('output', '$.steps.a.output', 'steps', jsonb_build_array(
    :'step'::jsonb || '{"id": "a", "transformer": "transform", "depends_on": []}')));

select throws_ok(format($$select workflow.start_job(%L, 'tap-start', 1, '[1]')$$, :'uid'),
                 'PT400', 'input_data: must be a JSON object', 'the input is an object');
select throws_ok(format($$select workflow.start_job(%L, 'tap-start', 1,
                          jsonb_build_object('x', (repeat('[', 64) || repeat(']', 64))::jsonb))$$, :'uid'),
                 'PT400', 'input_data: nested more than 64 levels deep', 'within 64 levels');
select throws_ok($$select workflow.start_job('00000000-0000-4000-8000-0000000000ff', 'tap-start', 1, '{}')$$,
                 'PT401', 'the token''s user does not exist', 'for a user who exists');
select throws_ok(format($$select workflow.start_job(%L, 'tap-start', 2, '{}')$$, :'uid'),
                 'PT409', 'workflow "tap-start" is at version 1, not 2', 'at the current version');

select workflow.start_job(:'uid', 'tap-start', 1, '{"a": 1, "b": 2}', 'key-1') ->> 'job_id' as job \gset
select is(workflow.start_job(:'uid', 'tap-start', 1, '{"b": 2, "a": 1}', 'key-1') ->> 'job_id', :'job',
          'the same key and input return the same job');
select is(workflow.start_job(:'uid', 'tap-start', null, '{"b": 2, "a": 1}', 'key-1') ->> 'existing',
          'true', 'also without a version (a replay)');
select throws_ok(format($$select workflow.start_job(%L, 'tap-start', 1, '{"a": 3}', 'key-1')$$, :'uid'),
                 'PT409', null, 'the same key with another input is a conflict');
select is((select count(*)::int from workflow.jobs where user_id = :'uid'), 1, 'one job in all');
select is((select count(*)::int from workflow.job_events e join workflow.jobs j on j.id = e.job_id
           where j.user_id = :'uid'), 1, 'with one job_created event');

select * from finish();
rollback;
