-- workflow.retry_delay: exponential, capped, jittered; malformed stored numbers read as defaults.
begin;
select plan(7);

create temp table d as
  select attempt, extract(epoch from workflow.retry_delay(
           '{"initial_delay_s": 1, "multiplier": 2, "max_delay_s": 10, "jitter": 0.2}', attempt))
           as s
  from generate_series(1, 8) attempt, generate_series(1, 50) sample;

select ok((select bool_and(s between 0.8 and 1.2) from d where attempt = 1),
          'attempt 1 waits the initial delay, +-20 %');
select ok((select bool_and(s between 3.2 and 4.8) from d where attempt = 3),
          'attempt 3 waits initial * multiplier^2, +-20 %');
select ok((select bool_and(s between 8 and 12) from d where attempt = 8),
          'the cap (10 s) holds, with jitter around it');
select ok((select bool_and(extract(epoch from workflow.retry_delay('{"initial_delay_s": 0.001, "jitter": 0}', 1)) = 0.05)),
          'never shorter than 50 ms');
select ok((select bool_and(extract(epoch from workflow.retry_delay('{}', 1)) between 0.8 and 1.2)
           from generate_series(1, 20)), 'no policy: 1 s, +-20 %');
select lives_ok($$select workflow.retry_delay(
                    '{"initial_delay_s": "x", "multiplier": 1e400, "max_delay_s": [1]}', 20)$$,
                'malformed numbers do not raise');
select ok(extract(epoch from workflow.retry_delay(
            '{"initial_delay_s": "x", "multiplier": 1e400, "max_delay_s": [1], "jitter": 0}', 3)) = 300,
          'they read as defaults, clamped: 1 s * 1000^2 capped at the default 300 s');

select * from finish();
rollback;
