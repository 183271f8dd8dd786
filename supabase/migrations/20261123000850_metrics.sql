-- Metrics and alerts (DESIGN.md section 12, seed 002's list). Jobs and attempts are counted from
-- job_events, rolled up incrementally: roll_up_metrics adds the events of every
-- transaction that has ended since the last roll-up (by xid: none counted twice, none
-- skipped) to per-minute rows (kept two days, for windows) and to running totals (for
-- Prometheus counters). Reading metrics therefore costs the same at a million jobs of
-- history as at ten. Timings the functions measure (API requests, orchestrator passes)
-- are flushed by each process into timing_rollups. GET /metrics and the views read them.

create index job_events_xid_idx on workflow.job_events (xid);

-- Upper bounds (seconds) of the duration histograms' buckets; one more bucket: +Inf.
create or replace function workflow.duration_bounds() returns double precision[]
language sql
immutable
set search_path = ''
as $$
  select array[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900,
               3600]::double precision[]
$$;

-- The bucket (1-based) a duration falls in: the first whose bound it does not exceed.
create or replace function workflow.duration_bucket(p_seconds double precision) returns integer
language sql
immutable
set search_path = ''
as $$
  select 1 + count(*)::integer from unnest(workflow.duration_bounds()) b where b < p_seconds
$$;

-- Per-bucket counts from (bucket, count) pairs: an array with one slot per bucket.
create or replace function workflow.bucket_counts(p_buckets integer[], p_counts bigint[])
returns bigint[]
language sql
immutable
set search_path = ''
as $$
  select array_agg(coalesce((select sum(p_counts[k]) from generate_subscripts(p_buckets, 1) k
                             where p_buckets[k] = g), 0)::bigint order by g)
  from generate_series(1, cardinality(workflow.duration_bounds()) + 1) g
$$;

create or replace function workflow.add_buckets(p_a bigint[], p_b bigint[]) returns bigint[]
language sql
immutable
set search_path = ''
as $$
  select array_agg(coalesce(x, 0) + coalesce(y, 0) order by i)
  from unnest(p_a, p_b) with ordinality t(x, y, i)
$$;

create aggregate workflow.bucket_sum(bigint[]) (sfunc = workflow.add_buckets, stype = bigint[]);

-- A quantile estimated from bucket counts, as Prometheus' histogram_quantile does:
-- linear within the bucket it falls in (the +Inf bucket answers its lower bound).
create or replace function workflow.bucket_quantile(p_q double precision, p_buckets bigint[])
returns double precision
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_bounds double precision[] := workflow.duration_bounds();
  v_total double precision := (select sum(x) from unnest(p_buckets) x);
  v_rank double precision;
  v_seen double precision := 0;
  v_lower double precision := 0;
begin
  if coalesce(v_total, 0) = 0 then
    return null;
  end if;
  v_rank := p_q * v_total;
  for i in 1 .. cardinality(p_buckets) loop
    if v_seen + p_buckets[i] >= v_rank and p_buckets[i] > 0 then
      if i > cardinality(v_bounds) then
        return v_lower;
      end if;
      return v_lower + (v_bounds[i] - v_lower) * (v_rank - v_seen) / p_buckets[i];
    end if;
    v_seen := v_seen + p_buckets[i];
    v_lower := coalesce(v_bounds[i], v_lower);
  end loop;
  return v_lower;
end
$$;

-- One series: finished jobs (kind job; outcome completed, failed or cancelled), ended
-- attempts (kind step; outcome completed, failed or retried, with the error type), or
-- finished jobs retried (kind retry; outcome the status they left: failed or cancelled,
-- so the jobs now in a finished status are the finished ones less the retried ones).
create table workflow.metric_rollups (
  minute timestamptz not null,
  kind text not null check (kind in ('job', 'step', 'retry')),
  workflow_id text not null,
  step_id text not null,
  transformer_id text not null,
  outcome text not null,
  error_type text not null,
  count bigint not null,
  duration_sum double precision not null,
  duration_buckets bigint[] not null,
  primary key (minute, kind, workflow_id, step_id, transformer_id, outcome, error_type)
);
create table workflow.metric_totals (
  kind text not null,
  workflow_id text not null,
  step_id text not null,
  transformer_id text not null,
  outcome text not null,
  error_type text not null,
  count bigint not null,
  duration_sum double precision not null,
  duration_buckets bigint[] not null,
  primary key (kind, workflow_id, step_id, transformer_id, outcome, error_type)
);
-- Where the last roll-up stopped: every transaction below this xid had ended.
create table workflow.metric_cursor (
  only_row boolean primary key default true check (only_row),
  rolled_up_to xid8 not null
);
insert into workflow.metric_cursor (rolled_up_to) values ('1'::xid8);

-- Timings measured by the functions: `api` (label: "<route> <status>") and `pass`
-- (label: how the pass ended). Each process appends its own rows.
create table workflow.timing_rollups (
  id bigint generated always as identity primary key,
  minute timestamptz not null,
  name text not null check (name in ('api', 'pass')),
  label text not null check (char_length(label) <= 200),
  count bigint not null,
  duration_sum double precision not null,
  duration_max double precision not null,
  duration_buckets bigint[] not null
);
create index timing_rollups_minute_idx on workflow.timing_rollups (minute);
create table workflow.timing_totals (
  name text not null,
  label text not null,
  count bigint not null,
  duration_sum double precision not null,
  duration_buckets bigint[] not null,
  primary key (name, label)
);

-- The queue, sampled once a minute by the roll-up (the dashboard's queue depth over time).
create table workflow.queue_samples (
  minute timestamptz primary key,
  pending_jobs bigint not null,
  running_jobs bigint not null,
  awaiting_retry_jobs bigint not null,
  ready_steps bigint not null
);
alter table workflow.queue_samples enable row level security;
alter table workflow.metric_rollups enable row level security;
alter table workflow.metric_totals enable row level security;
alter table workflow.metric_cursor enable row level security;
alter table workflow.timing_rollups enable row level security;
alter table workflow.timing_totals enable row level security;

-- Adds the events of every transaction that ended since the last call; returns how many
-- running totals it changed. Called every minute by pg_cron and by GET /metrics (so it is always current);
-- concurrent calls take turns on the cursor row.
create or replace function workflow.roll_up_metrics() returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_from xid8;
  v_to xid8 := pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot());
  v_count bigint;
begin
  select rolled_up_to into v_from from workflow.metric_cursor for update;
  if v_to <= v_from then
    return 0;
  end if;
  with ended as (
    select e.created_at,
           case when e.from_status in ('failed', 'cancelled') then 'retry'
                when e.event_type like 'job\_%' then 'job' else 'step' end as kind,
           j.workflow_id,
           coalesce(e.step_id, '') as step_id,
           coalesce(e.detail ->> 'transformer_id', '') as transformer_id,
           case when e.from_status in ('failed', 'cancelled') then e.from_status
                when e.event_type = 'step_retry_scheduled' then 'retried'
                when e.event_type = 'step_completed' then 'completed'
                when e.event_type = 'step_failed' then 'failed'
                else e.to_status end as outcome,
           coalesce(e.detail ->> 'error_type', '') as error_type,
           coalesce((e.detail ->> 'duration_s')::double precision, 0) as duration_s
    from workflow.job_events e
    join workflow.jobs j on j.id = e.job_id
    where e.xid >= v_from and e.xid < v_to
      and (e.event_type in ('job_completed', 'job_failed', 'job_cancelled', 'step_completed',
                            'step_failed', 'step_retry_scheduled')
           or (e.event_type like 'job\_%' and e.from_status in ('failed', 'cancelled')))
  ), cells as (
    -- Per minute only for what the windows can still see (the last two days).
    select case when created_at >= now() - interval '2 days'
                then date_trunc('minute', created_at) end as minute,
           kind, workflow_id, step_id, transformer_id, outcome, error_type,
           workflow.duration_bucket(duration_s) as bucket, count(*) as n, sum(duration_s) as total
    from ended group by 1, 2, 3, 4, 5, 6, 7, 8
  ), minutes as (
    insert into workflow.metric_rollups as r
    select minute, kind, workflow_id, step_id, transformer_id, outcome, error_type,
           sum(n)::bigint, sum(total), workflow.bucket_counts(array_agg(bucket), array_agg(n))
    from cells where minute is not null group by 1, 2, 3, 4, 5, 6, 7
    on conflict (minute, kind, workflow_id, step_id, transformer_id, outcome, error_type)
    do update set count = r.count + excluded.count,
      duration_sum = r.duration_sum + excluded.duration_sum,
      duration_buckets = workflow.add_buckets(r.duration_buckets, excluded.duration_buckets)
  ), series as (
    select kind, workflow_id, step_id, transformer_id, outcome, error_type, bucket,
           sum(n) as n, sum(total) as total
    from cells group by 1, 2, 3, 4, 5, 6, 7
  )
  insert into workflow.metric_totals as t
  select kind, workflow_id, step_id, transformer_id, outcome, error_type, sum(n)::bigint,
         sum(total), workflow.bucket_counts(array_agg(bucket), array_agg(n::bigint))
  from series group by 1, 2, 3, 4, 5, 6
  on conflict (kind, workflow_id, step_id, transformer_id, outcome, error_type)
  do update set count = t.count + excluded.count,
    duration_sum = t.duration_sum + excluded.duration_sum,
    duration_buckets = workflow.add_buckets(t.duration_buckets, excluded.duration_buckets);
  get diagnostics v_count = row_count;
  delete from workflow.metric_rollups where minute < now() - interval '2 days';
  delete from workflow.timing_rollups where minute < now() - interval '2 days';
  insert into workflow.queue_samples
  select date_trunc('minute', now()), q.pending_jobs, q.running_jobs, q.awaiting_retry_jobs,
         q.ready_steps
  from workflow.queue_metrics q
  on conflict (minute) do nothing;
  delete from workflow.queue_samples where minute < now() - interval '2 days';
  update workflow.metric_cursor set rolled_up_to = v_to;
  return v_count;
end
$$;

-- A function process's timings since its last flush, as raw durations (bucketed here,
-- by the one owner of the bounds): [{"name", "label", "minute", "durations": [s, ...]}].
create or replace function workflow.record_timings(p_rows jsonb) returns void
language sql
set search_path = ''
as $$
  with measured as (
    select r ->> 'name' as name, left(r ->> 'label', 200) as label,
           date_trunc('minute', (r ->> 'minute')::timestamptz) as minute,
           d.value::double precision as seconds
    from jsonb_array_elements(p_rows) r, jsonb_array_elements_text(r -> 'durations') d
  ), cells as (
    select name, label, minute, workflow.duration_bucket(seconds) as bucket, count(*) as n,
           sum(seconds) as total, max(seconds) as longest
    from measured group by 1, 2, 3, 4
  ), rows as (
    select name, label, minute, sum(n)::bigint as count, sum(total) as total,
           max(longest) as longest,
           workflow.bucket_counts(array_agg(bucket), array_agg(n)) as buckets
    from cells group by 1, 2, 3
  ), inserted as (
    insert into workflow.timing_rollups (minute, name, label, count, duration_sum, duration_max,
                                         duration_buckets)
    select minute, name, label, count, total, longest, buckets from rows
  )
  insert into workflow.timing_totals as t (name, label, count, duration_sum, duration_buckets)
  select name, label, sum(count), sum(total), workflow.bucket_sum(buckets) from rows
  group by name, label
  on conflict (name, label) do update set count = t.count + excluded.count,
    duration_sum = t.duration_sum + excluded.duration_sum,
    duration_buckets = workflow.add_buckets(t.duration_buckets, excluded.duration_buckets)
$$;

-- The windows the views and GET /metrics report on.
create or replace function workflow.metric_windows() returns table (name text, span interval)
language sql
immutable
set search_path = ''
as $$
  values ('5m', interval '5 minutes'), ('1h', interval '1 hour'), ('24h', interval '24 hours')
$$;

-- Seed 002's metrics, for Supabase users (service role; SQL editor). Windows: 5m, 1h, 24h.
create or replace view workflow.job_metrics with (security_invoker = true) as
  select w.name as window, r.workflow_id,
         coalesce(sum(r.count) filter (where r.outcome = 'completed'), 0) as completed,
         coalesce(sum(r.count) filter (where r.outcome = 'failed'), 0) as failed,
         coalesce(sum(r.count) filter (where r.outcome = 'cancelled'), 0) as cancelled,
         round(coalesce(sum(r.count) filter (where r.outcome = 'failed'), 0)::numeric
               / sum(r.count), 4) as failure_rate,
         round((sum(r.duration_sum) / sum(r.count))::numeric, 3) as duration_avg_s,
         workflow.bucket_quantile(0.5, workflow.bucket_sum(r.duration_buckets)) as duration_p50_s,
         workflow.bucket_quantile(0.95, workflow.bucket_sum(r.duration_buckets)) as duration_p95_s,
         workflow.bucket_quantile(0.99, workflow.bucket_sum(r.duration_buckets)) as duration_p99_s
  from workflow.metric_windows() w
  join workflow.metric_rollups r on r.kind = 'job' and r.minute >= now() - w.span
  group by w.name, r.workflow_id;

create or replace view workflow.step_failure_metrics with (security_invoker = true) as
  select w.name as window, r.workflow_id, r.step_id, r.transformer_id, r.error_type,
         coalesce(sum(r.count) filter (where r.outcome = 'failed'), 0) as failed,
         coalesce(sum(r.count) filter (where r.outcome = 'retried'), 0) as retried
  from workflow.metric_windows() w
  join workflow.metric_rollups r on r.kind = 'step' and r.outcome in ('failed', 'retried')
    and r.minute >= now() - w.span
  group by w.name, r.workflow_id, r.step_id, r.transformer_id, r.error_type;

create or replace view workflow.step_duration_metrics with (security_invoker = true) as
  select w.name as window, r.transformer_id, sum(r.count) as attempts,
         round((sum(r.duration_sum) / sum(r.count))::numeric, 3) as duration_avg_s,
         workflow.bucket_quantile(0.5, workflow.bucket_sum(r.duration_buckets)) as duration_p50_s,
         workflow.bucket_quantile(0.95, workflow.bucket_sum(r.duration_buckets)) as duration_p95_s,
         workflow.bucket_quantile(0.99, workflow.bucket_sum(r.duration_buckets)) as duration_p99_s
  from workflow.metric_windows() w
  join workflow.metric_rollups r on r.kind = 'step' and r.minute >= now() - w.span
  group by w.name, r.transformer_id;

create or replace view workflow.timing_metrics with (security_invoker = true) as
  select w.name as window, t.name, t.label, sum(t.count) as count,
         round((sum(t.duration_sum) / sum(t.count))::numeric, 4) as duration_avg_s,
         workflow.bucket_quantile(0.5, workflow.bucket_sum(t.duration_buckets)) as duration_p50_s,
         workflow.bucket_quantile(0.95, workflow.bucket_sum(t.duration_buckets)) as duration_p95_s,
         workflow.bucket_quantile(0.99, workflow.bucket_sum(t.duration_buckets)) as duration_p99_s
  from workflow.metric_windows() w
  join workflow.timing_rollups t on t.minute >= now() - w.span
  group by w.name, t.name, t.label;

create or replace view workflow.queue_metrics with (security_invoker = true) as
  select
    (select count(*) from workflow.jobs where status = 'pending') as pending_jobs,
    (select count(*) from workflow.jobs where status = 'running') as running_jobs,
    (select count(*) from workflow.jobs where status = 'awaiting_retry') as awaiting_retry_jobs,
    (select count(*) from workflow.job_steps where status = 'ready' and next_attempt_at <= now())
      as ready_steps,
    (select count(*) from workflow.job_steps where status = 'ready' and next_attempt_at > now())
      as delayed_steps,
    (select coalesce(extract(epoch from now() - min(next_attempt_at)), 0)
     from workflow.job_steps where status = 'ready' and next_attempt_at <= now())
      as oldest_ready_age_s;

-- Everything GET /metrics serves (after rolling up what is new): running totals for the
-- counters and histograms, the 5m and 1h windows, and the queue now.
-- Alerts (DESIGN.md section 12, seed 002's list): rules with thresholds in a table,
-- evaluated after each scheduled orchestrator pass (shared.alerts), each firing and each
-- resolution recorded once (one firing alert per rule and subject at a time: a storm of
-- a thousand failed jobs is one alert), delivered once to the rule's webhook.
--
-- A rule fires for a subject (a workflow, or '' for the engine) while its value is over
-- `threshold` with at least `min_volume` behind it, over the last `window_s` seconds:
-- - failure_rate: failed / finished jobs of a workflow (volume: finished jobs);
-- - stalled_jobs: jobs of a workflow running and unchanged for longer than the window,
--   or awaiting a retry (or a delay) that fell due longer ago than the window (value and
--   volume: how many; a job waiting out a long delay is not stalled);
-- - slow_passes: the longest orchestrator pass in the window, in seconds (volume: passes);
-- - config_errors: attempts of a workflow failed because a transformer's configuration
--   could not be found or used (error type config; value and volume: how many);
-- - trigger_failures: row changes whose trigger could not start its workflow (the
--   change committed; workflow.trigger_failures), per trigger.

create table workflow.alert_rules (
  id workflow.object_id primary key,
  kind text not null check (kind in ('failure_rate', 'stalled_jobs', 'slow_passes',
                                     'config_errors', 'trigger_failures')),
  description text check (char_length(description) <= 500),
  threshold double precision not null check (threshold between 0 and 1e9),
  window_s integer not null check (window_s between 60 and 86400),
  min_volume integer not null default 1 check (min_volume between 0 and 1000000),
  enabled boolean not null default true,
  webhook_url text check (char_length(webhook_url) <= 2000),
  updated_at timestamptz not null default now()
);
insert into workflow.alert_rules (id, kind, description, threshold, window_s, min_volume) values
  ('high-failure-rate', 'failure_rate',
   'A workflow failed more than half of at least 10 jobs in 15 minutes', 0.5, 900, 10),
  ('stalled-jobs', 'stalled_jobs',
   'Jobs running or awaiting a retry, unchanged for 30 minutes', 0, 1800, 1),
  ('slow-passes', 'slow_passes',
   'An orchestrator pass ran over 2 minutes in the last 15 (its budget is 1)', 120, 900, 1),
  ('config-errors', 'config_errors',
   'Steps failed because a transformer''s configuration is missing or unusable', 0, 900, 1),
  ('trigger-failures', 'trigger_failures',
   'A database trigger could not start its workflow (the row change committed)', 0, 900, 1);

create table workflow.alerts (
  id bigint generated always as identity primary key,
  rule_id text not null references workflow.alert_rules (id) on delete cascade,
  subject text not null,
  status text not null check (status in ('firing', 'resolved')),
  value double precision not null,
  fired_at timestamptz not null default now(),
  resolved_at timestamptz,
  fire_delivered_at timestamptz,
  resolve_delivered_at timestamptz,
  -- An evaluator delivering the current state holds it until then (no one else sends
  -- it meanwhile); if it never marks it delivered, the next evaluation after sends it.
  delivery_claimed_until timestamptz
);
create unique index alerts_one_firing_idx on workflow.alerts (rule_id, subject)
  where status = 'firing';
create index alerts_fired_idx on workflow.alerts (fired_at desc);
create index jobs_stalled_idx on workflow.jobs (last_updated_at)
  where status in ('running', 'awaiting_retry');
alter table workflow.alert_rules enable row level security;
alter table workflow.alerts enable row level security;

-- Each enabled rule's value per subject now (rows over the threshold and volume fire).
create or replace function workflow.alert_values()
returns table (rule_id text, subject text, value double precision, volume bigint)
language sql
stable
set search_path = ''
as $$
  select r.id, m.workflow_id,
         sum(m.count) filter (where m.outcome = 'failed')::double precision / sum(m.count),
         sum(m.count)
  from workflow.alert_rules r
  join workflow.metric_rollups m on m.kind = 'job'
    and m.minute >= date_trunc('minute', now() - make_interval(secs => r.window_s))
  where r.enabled and r.kind = 'failure_rate'
  group by r.id, m.workflow_id
  union all
  select r.id, j.workflow_id, count(*), count(*)
  from workflow.alert_rules r
  join workflow.jobs j on j.status in ('running', 'awaiting_retry')
    and j.last_updated_at < now() - make_interval(secs => r.window_s)
    and (j.status = 'running'
         or coalesce(j.next_retry_at, j.last_updated_at) < now() - make_interval(secs => r.window_s))
  where r.enabled and r.kind = 'stalled_jobs'
  group by r.id, j.workflow_id
  union all
  select r.id, '', max(t.duration_max), sum(t.count)
  from workflow.alert_rules r
  join workflow.timing_rollups t on t.name = 'pass' and t.label <> 'skipped'
    and t.minute >= date_trunc('minute', now() - make_interval(secs => r.window_s))
  where r.enabled and r.kind = 'slow_passes'
  group by r.id
  union all
  select r.id, m.workflow_id, sum(m.count), sum(m.count)
  from workflow.alert_rules r
  join workflow.metric_rollups m on m.kind = 'step' and m.error_type = 'config'
    and m.minute >= date_trunc('minute', now() - make_interval(secs => r.window_s))
  where r.enabled and r.kind = 'config_errors'
  group by r.id, m.workflow_id
  union all
  select r.id, f.trigger_id, count(*), count(*)
  from workflow.alert_rules r
  join workflow.trigger_failures f
    on f.created_at >= now() - make_interval(secs => r.window_s)
  where r.enabled and r.kind = 'trigger_failures'
  group by r.id, f.trigger_id
$$;

-- Records what fired and what resolved since the last evaluation (one evaluator at a
-- time), and returns the alerts that changed (`new`) and those this evaluator is to
-- deliver (`webhook_url` set): each whose rule has a webhook, whose current state was
-- not delivered, and that no other evaluator holds (at most 5, each held 2 minutes).
create or replace function workflow.evaluate_alerts() returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_changed bigint[];
  v_deliver bigint[];
begin
  perform pg_catalog.pg_advisory_xact_lock(hashtext('supaflow.evaluate_alerts'));
  perform workflow.roll_up_metrics();
  create temporary table if not exists pg_temp.alert_now (rule_id text, subject text,
    value double precision) on commit drop;
  truncate pg_temp.alert_now;
  insert into pg_temp.alert_now
  select v.rule_id, v.subject, v.value from workflow.alert_values() v
  join workflow.alert_rules r on r.id = v.rule_id
  where v.value > r.threshold and v.volume >= r.min_volume;
  with fired as (
    insert into workflow.alerts (rule_id, subject, status, value)
    select n.rule_id, n.subject, 'firing', n.value from pg_temp.alert_now n
    on conflict (rule_id, subject) where status = 'firing' do nothing
    returning id
  ), resolved as (
    update workflow.alerts a set status = 'resolved', resolved_at = now()
    where a.status = 'firing' and not exists (
      select 1 from pg_temp.alert_now n where n.rule_id = a.rule_id and n.subject = a.subject)
    returning a.id
  )
  select coalesce(array_agg(id), '{}') into v_changed
  from (select id from fired union all select id from resolved) c;
  with held as (
    -- At most 5 per evaluation (each sent within 5 s), held well past that.
    update workflow.alerts a set delivery_claimed_until = now() + interval '2 minutes'
    where a.id in (
      select a2.id from workflow.alerts a2 join workflow.alert_rules r on r.id = a2.rule_id
      where r.webhook_url is not null
        and ((a2.status = 'firing' and a2.fire_delivered_at is null)
             or (a2.status = 'resolved' and a2.resolve_delivered_at is null))
        and coalesce(a2.delivery_claimed_until, '-infinity') < now()
      order by a2.id limit 5)
    returning a.id
  )
  select coalesce(array_agg(id), '{}') into v_deliver from held;
  return coalesce((
    select jsonb_agg(workflow.describe_alert(a, r) || jsonb_build_object(
             'webhook_url', case when a.id = any(v_deliver) then r.webhook_url end,
             'new', a.id = any(v_changed)) order by a.id)
    from workflow.alerts a join workflow.alert_rules r on r.id = a.rule_id
    where a.id = any(v_changed) or a.id = any(v_deliver)), '[]');
end
$$;

create or replace function workflow.describe_alert(p_alert workflow.alerts,
                                                   p_rule workflow.alert_rules) returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object(
    'alert_id', p_alert.id, 'rule_id', p_alert.rule_id, 'kind', p_rule.kind,
    'description', p_rule.description, 'subject', p_alert.subject, 'status', p_alert.status,
    'value', p_alert.value, 'threshold', p_rule.threshold, 'fired_at', p_alert.fired_at,
    'resolved_at', p_alert.resolved_at)
$$;

-- Deliveries that went through: [{"alert_id", "status"}]; each is delivered once.
create or replace function workflow.mark_alerts_delivered(p_deliveries jsonb) returns void
language sql
set search_path = ''
as $$
  update workflow.alerts a set
    fire_delivered_at = case when d ->> 'status' = 'firing'
                             then coalesce(a.fire_delivered_at, now()) else a.fire_delivered_at end,
    resolve_delivered_at = case when d ->> 'status' = 'resolved'
                                then coalesce(a.resolve_delivered_at, now())
                                else a.resolve_delivered_at end,
    delivery_claimed_until = null
  from jsonb_array_elements(p_deliveries) d
  where a.id = (d ->> 'alert_id')::bigint
$$;

create or replace function workflow.put_alert_rule(
  p_rule_id text, p_kind text, p_description text, p_threshold double precision,
  p_window_s integer, p_min_volume integer, p_enabled boolean, p_webhook_url text,
  p_claims jsonb
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_row workflow.alert_rules;
begin
  perform workflow.require_operator(p_claims);
  perform workflow.check_object_id(p_rule_id, 'rule id');
  insert into workflow.alert_rules as r (id, kind, description, threshold, window_s,
                                         min_volume, enabled, webhook_url)
  values (p_rule_id, p_kind, p_description, p_threshold, p_window_s, p_min_volume, p_enabled,
          p_webhook_url)
  on conflict (id) do update set kind = excluded.kind, description = excluded.description,
    threshold = excluded.threshold, window_s = excluded.window_s,
    min_volume = excluded.min_volume, enabled = excluded.enabled,
    webhook_url = excluded.webhook_url, updated_at = now()
  returning * into v_row;
  return to_jsonb(v_row) - 'id' || jsonb_build_object('rule_id', v_row.id);
end
$$;

create or replace function workflow.list_alert_rules(p_claims jsonb) returns jsonb
language plpgsql
stable
set search_path = ''
as $$
begin
  perform workflow.require_operator(p_claims);
  return coalesce((select jsonb_agg(to_jsonb(r) - 'id' || jsonb_build_object('rule_id', r.id)
                                    order by r.id) from workflow.alert_rules r), '[]');
end
$$;

-- The firing alerts (p_all: and the last 100 resolved), newest first.
create or replace function workflow.list_alerts(p_claims jsonb, p_all boolean) returns jsonb
language plpgsql
stable
set search_path = ''
as $$
begin
  perform workflow.require_operator(p_claims);
  return coalesce((
    select jsonb_agg(workflow.describe_alert(a, r) order by a.fired_at desc, a.id desc)
    from (select * from workflow.alerts where status = 'firing'
          union all
          (select * from workflow.alerts where p_all and status = 'resolved'
           order by fired_at desc limit 100)) a
    join workflow.alert_rules r on r.id = a.rule_id), '[]');
end
$$;

-- Metrics and alerts span every tenant: the service role (or the internal credential,
-- which the functions turn into service claims), or an admin of no tenant.
create or replace function workflow.require_operator(p_claims jsonb) returns void
language plpgsql
stable
set search_path = ''
as $$
begin
  if not (workflow.claims_service(p_claims)
          or (workflow.claims_admin(p_claims) and workflow.claims_tenant(p_claims) is null)) then
    raise sqlstate 'PT403' using detail = 'forbidden', message = 'this spans every tenant:'
      || ' the service-role key, the internal credential, or an admin of no tenant';
  end if;
end
$$;

create or replace function workflow.metrics_report(p_claims jsonb) returns jsonb
language plpgsql
set search_path = ''
as $$
begin
  perform workflow.require_operator(p_claims);
  perform workflow.roll_up_metrics();
  return jsonb_build_object(
    'bounds', to_jsonb(workflow.duration_bounds()),
    'totals', coalesce((select jsonb_agg(to_jsonb(t)) from workflow.metric_totals t), '[]'),
    'timings', coalesce((select jsonb_agg(to_jsonb(t)) from workflow.timing_totals t), '[]'),
    'jobs', coalesce((select jsonb_agg(to_jsonb(m)) from workflow.job_metrics m
                      where m.window in ('5m', '1h')), '[]'),
    'queue', (select to_jsonb(q) from workflow.queue_metrics q),
    'alerts', coalesce((select jsonb_agg(jsonb_build_object('rule_id', a.rule_id,
                                                            'subject', a.subject))
                        from workflow.alerts a where a.status = 'firing'), '[]'));
end
$$;

-- Rolled up every minute, whether or not anyone scrapes (the alerts read the rollups).
select cron.schedule('supaflow-metrics', '* * * * *', 'select workflow.roll_up_metrics()');

-- A user's or a tenant's jobs finished in the last hour (the dashboard's chart), whenever
-- they were created: only finished jobs enter these.
create index jobs_user_completed_idx on workflow.jobs (user_id, completed_at)
  where completed_at is not null;
create index jobs_tenant_completed_idx on workflow.jobs (tenant_id, completed_at)
  where completed_at is not null;

-- The dashboard's overview for one caller: job counts by status now and, per minute over
-- the last hour, jobs finished and failed. Operators (service role, admin of no tenant)
-- read the active statuses through their index and the finished ones from the totals
-- (finished less retried), rolled up first; a tenant admin their tenant's jobs, a user
-- their own (counts through the owner's index, the chart through the one above).
create or replace function workflow.dashboard_stats(p_claims jsonb, p_user_id uuid)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_operator boolean := workflow.claims_service(p_claims)
    or (workflow.claims_admin(p_claims) and workflow.claims_tenant(p_claims) is null);
  v_tenant text := case when workflow.claims_admin(p_claims)
                        then workflow.claims_tenant(p_claims) end;
  v_since timestamptz := date_trunc('minute', now()) - interval '59 minutes';
begin
  if v_operator then
    perform workflow.roll_up_metrics();
    return jsonb_build_object(
      'scope', 'all',
      'counts', (select coalesce(jsonb_object_agg(status, n) filter (where n > 0), '{}') from (
          select j.status, count(*) as n from workflow.jobs j
          where j.status in ('pending', 'running', 'awaiting_retry') group by j.status
          union all
          select t.outcome, sum(case t.kind when 'job' then t.count else -t.count end)
          from workflow.metric_totals t
          where t.kind in ('job', 'retry') group by t.outcome) c),
      'minutes', (select coalesce(jsonb_agg(jsonb_build_object('minute', m.minute,
                    'finished', m.finished, 'failed', m.failed) order by m.minute), '[]')
                  from (select r.minute, sum(r.count) as finished,
                               coalesce(sum(r.count) filter (where r.outcome = 'failed'), 0)
                                 as failed
                        from workflow.metric_rollups r
                        where r.kind = 'job' and r.minute >= v_since group by r.minute) m),
      'queue', (select coalesce(jsonb_agg(to_jsonb(q) order by q.minute), '[]')
                from workflow.queue_samples q where q.minute >= v_since));
  end if;
  if p_user_id is null and v_tenant is null then
    raise sqlstate 'PT403' using detail = 'forbidden', message = 'a user or an admin only';
  end if;
  return jsonb_build_object(
    'scope', case when v_tenant is not null then 'tenant' else 'own' end,
    'counts', (select coalesce(jsonb_object_agg(status, n), '{}') from (
        select j.status, count(*) as n from workflow.jobs j
        where (v_tenant is not null and j.tenant_id = v_tenant)
           or (v_tenant is null and j.user_id = p_user_id)
        group by j.status) c),
    'minutes', (select coalesce(jsonb_agg(jsonb_build_object('minute', m.minute,
                  'finished', m.finished, 'failed', m.failed) order by m.minute), '[]')
                from (select date_trunc('minute', j.completed_at) as minute, count(*) as finished,
                             count(*) filter (where j.status = 'failed') as failed
                      from workflow.jobs j
                      where ((v_tenant is not null and j.tenant_id = v_tenant)
                             or (v_tenant is null and j.user_id = p_user_id))
                        and j.completed_at >= v_since
                      group by 1) m));
end
$$;
