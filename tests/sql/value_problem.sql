-- workflow.value_problem: the one rule for what the engine stores (depth <= 64, <= 1 MiB).
begin;
select plan(8);

select is(workflow.value_problem('{"a": 1}'), null, 'a small object is fine');
select is(workflow.value_problem('1'), null, 'a scalar has depth 0');
select is(workflow.value_problem((repeat('[', 64) || repeat(']', 64))::jsonb), null,
          '64 levels is at the cap');
select is(workflow.value_problem((repeat('[', 65) || repeat(']', 65))::jsonb),
          'nested more than 64 levels deep', '65 levels is over it');
select is(workflow.value_problem(('{"a":' || repeat('[', 63) || '{"b": 1}' || repeat(']', 63) || '}')::jsonb),
          'nested more than 64 levels deep', 'objects count as levels too');
select is(workflow.value_problem((repeat('[', 3000) || repeat(']', 3000))::jsonb),
          'nested more than 64 levels deep', '3,000 levels is refused, not walked');
select is(workflow.value_problem(jsonb_build_object('s', repeat('x', 1048560))), null,
          'just under 1 MiB of JSON text is fine');
select matches(workflow.value_problem(jsonb_build_object('s', repeat('x', 1048577))),
               '^10485[0-9]+ bytes of JSON, over the 1 MiB', 'over 1 MiB is refused with its size');

select * from finish();
rollback;
