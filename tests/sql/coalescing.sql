-- Kicks are coalesced in the database: while an orchestrator pass is alive, starts need none.
begin;
select plan(9);

\set uid '00000000-0000-4000-8000-00000000c001'
insert into auth.users (id, email) values (:'uid', 'coalescing@example.test');
insert into workflow.workflows (id, definition)
  values ('tap-kick', jsonb_build_object('output', '$.steps.a.output', 'steps', jsonb_build_array(
    :'step'::jsonb || '{"id": "a", "transformer": "transform", "depends_on": []}')));
delete from workflow.orchestrator_passes;  -- (rolled back) as if no pass were running

select is(workflow.start_job(:'uid', 'tap-kick', 1, '{"n": 1}') -> 'kick', 'true'::jsonb,
          'with no pass alive, a start asks for a kick');
select is(workflow.start_job(:'uid', 'tap-kick', 1, '{"n": 2}', 'k') -> 'kick', 'true'::jsonb, '(again)');
select is(workflow.start_job(:'uid', 'tap-kick', 1, '{"n": 2}', 'k') -> 'kick', null,
          'a replay of an existing start kicks nothing');

select count(*) as none from workflow.claim_steps(0, '00000000-0000-4000-8000-0000000000aa', 60) \gset
select is(workflow.start_job(:'uid', 'tap-kick', 1, '{"n": 3}') -> 'kick', 'false'::jsonb,
          'a claim with a pass id makes the pass alive: no kick');

insert into workflow.orchestrator_passes values
  ('00000000-0000-4000-8000-0000000000bb', now() - interval '2 minutes');
select workflow.end_pass('00000000-0000-4000-8000-0000000000aa');
select is((select count(*)::int from workflow.orchestrator_passes), 0,
          'end_pass removes its heartbeat and long-dead ones');
select is(workflow.start_job(:'uid', 'tap-kick', 1, '{"n": 4}') -> 'kick', 'true'::jsonb,
          'after it, starts kick again');

select ok(workflow.begin_pass('00000000-0000-4000-8000-0000000000dd', 60),
          'a kicked pass begins when no other pass is alive');
select ok(not workflow.begin_pass('00000000-0000-4000-8000-0000000000ee', 60),
          'the next kicked pass of the burst does not: the first takes the work');
delete from workflow.orchestrator_passes;
insert into workflow.orchestrator_passes values
  ('00000000-0000-4000-8000-0000000000cc', now() - interval '1 second');
select is(workflow.start_job(:'uid', 'tap-kick', 1, '{"n": 5}') -> 'kick', 'true'::jsonb,
          'an expired heartbeat (a pass that died) does not stop kicks');

select * from finish();
rollback;
