-- wait_for_ready: an idle pass waits in Postgres for a step to become ready and due,
-- and hears of one committed while it waits (each statement sees new commits).
begin;
select plan(4);

\set uid '00000000-0000-4000-8000-00000000f007'
insert into auth.users (id, email) values (:'uid', 'wait@example.test');
insert into workflow.workflows (id, definition)
  values ('tap-wait', jsonb_build_object('output', '$.steps.a.output', 'steps', jsonb_build_array(
    :'step'::jsonb || '{"id": "a", "transformer": "transform", "depends_on": []}')));
-- (rolled back) as if no other step were ready
update workflow.job_steps set status = 'waiting' where status = 'ready';

create temp table t (label text, ready boolean, took_s float8);
create function pg_temp.timed(p_label text, p_wait_s float8) returns void language plpgsql as $$
declare v_at timestamptz := clock_timestamp(); v_ready boolean;
begin
  v_ready := workflow.wait_for_ready(p_wait_s);
  insert into t values (p_label, v_ready,
                        extract(epoch from clock_timestamp() - v_at));
end $$;

select pg_temp.timed('idle', 0.05);
select ok((select not ready and took_s between 0.05 and 0.2 from t where label = 'idle'),
          'with nothing ready it waits the time it was given, and says so');

select workflow.start_job(:'uid', 'tap-wait', 1, '{}') ->> 'job_id' as job \gset
select pg_temp.timed('ready', 0.2);
select ok((select ready and took_s < 0.02 from t where label = 'ready'),
          'a ready step ends the wait at once');

update workflow.job_steps set next_attempt_at = clock_timestamp() + interval '60 ms'
where job_id = :'job';
select pg_temp.timed('due', 0.2);
select ok((select ready and took_s between 0.05 and 0.15 from t where label = 'due'),
          'a step that is ready but not due yet ends the wait when it falls due');

update workflow.job_steps set next_attempt_at = clock_timestamp() + interval '1 hour'
where job_id = :'job';
select pg_temp.timed('capped', 10);
select ok((select not ready and took_s between 0.2 and 0.4 from t where label = 'capped'),
          'a wait is capped at 0.2 s, whatever the caller asks');

select * from finish();
rollback;
