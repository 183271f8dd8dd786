-- workflows_check_definition: only normalised definitions are stored (every default
-- written out, numbers within bounds, dependencies on listed steps), so no stored
-- definition can fail a claim or a retry; the message names what is wrong.
begin;
select plan(10);

create temp table good as select jsonb_build_object('output', '$.steps.b.output', 'steps',
  jsonb_build_array(:'step'::jsonb || '{"id": "a", "transformer": "transform", "depends_on": []}',
                    :'step'::jsonb || '{"id": "b", "transformer": "transform", "depends_on": ["a"]}'))
  as d;

select lives_ok($$insert into workflow.workflows (id, definition) select 'tap-good', d from good$$,
                'a normalised definition is stored');
select throws_ok($$insert into workflow.workflows (id, definition)
                   values ('tap-raw', '{"steps": [{"id": "a", "transformer": "transform"}]}')$$,
                 'PT400', null, 'a definition with defaults left out is refused');
select throws_like($$insert into workflow.workflows (id, definition)
                     values ('tap-raw', '{"steps": [{"id": "a", "transformer": "transform"}]}')$$,
                   '%"tap-raw": definition is not in normalised form: output: missing%',
                   'the message names the workflow and the problem');
select throws_like($$insert into workflow.workflows (id, definition) select 'tap-x',
                     jsonb_set(d, '{steps,1,depends_on}', '["nope"]') from good$$,
                   '%steps.1.depends_on: must list ids of the workflow''s steps%',
                   'a dependency on a step that is not listed');
select throws_like($$insert into workflow.workflows (id, definition) select 'tap-x',
                     jsonb_set(d, '{steps,0,timeout_s}', '"soon"') from good$$,
                   '%steps.0.timeout_s%', 'a timeout that is not a number');
select throws_like($$insert into workflow.workflows (id, definition) select 'tap-x',
                     jsonb_set(d, '{steps,0,timeout_s}', '2.5') from good$$,
                   '%steps.0.timeout_s%', 'a timeout that is not whole');
select throws_like($$insert into workflow.workflows (id, definition) select 'tap-x',
                     jsonb_set(d, '{steps,1,retry,multiplier}', '1e400') from good$$,
                   '%steps.1.retry%', 'a multiplier past the bounds');
select throws_like($$insert into workflow.workflows (id, definition) select 'tap-x',
                     d #- '{steps,0,retry,jitter}' from good$$,
                   '%steps.0.retry%', 'a partial retry policy');
select throws_like($$update workflow.workflows set definition = definition #- '{steps,0,inputs}'
                     where id = 'tap-good'$$,
                   '%steps.0.inputs%', 'updates are checked too');

select throws_like($$insert into workflow.workflows (id, definition) select 'tap-x',
                     jsonb_set(d, '{steps,0,depends_on}', '["b"]') from good$$,
                   '%no step starts at once%', 'a definition with no root (a cycle) could never run');

select * from finish();
rollback;
