-- workflow.retry_delay: exponential, capped, jittered, from a whole stored policy.
begin;
select plan(5);

create temp table d as
  select attempt, extract(epoch from workflow.retry_delay(
           '{"max_retries": 9, "initial_delay_s": 1, "multiplier": 2, "max_delay_s": 10, "jitter": 0.2}',
           attempt)) as s
  from generate_series(1, 8) attempt, generate_series(1, 50) sample;

select ok((select bool_and(s between 0.8 and 1.2) from d where attempt = 1),
          'attempt 1 waits the initial delay, +-20 %');
select ok((select bool_and(s between 3.2 and 4.8) from d where attempt = 3),
          'attempt 3 waits initial * multiplier^2, +-20 %');
select ok((select bool_and(s between 8 and 12) from d where attempt = 8),
          'the cap (10 s) holds, with jitter around it');
select ok((select bool_and(extract(epoch from workflow.retry_delay(
             '{"max_retries": 1, "initial_delay_s": 0.001, "multiplier": 1, "max_delay_s": 1, "jitter": 0}',
             1)) = 0.05)),
          'never shorter than 50 ms');
select lives_ok($$select workflow.retry_delay(
                    '{"max_retries": 20, "initial_delay_s": 86400, "multiplier": 10, "max_delay_s": 86400,
                      "jitter": 1}', 2000000000)$$,
                'the largest policy the bounds allow, at any attempt, does not overflow');

select * from finish();
rollback;
