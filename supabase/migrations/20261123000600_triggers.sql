-- Starting workflows from row changes (DESIGN.md section 11): attach a workflow to a
-- table's INSERT, UPDATE or DELETE; a trigger then starts a job in the same transaction as
-- the change (workflow.start_workflow), so the job exists if and only if the change
-- commits. A start that fails (the workflow deactivated, say) never blocks the change: it
-- is recorded in trigger_failures. Attaching installs SQL into the user's own tables, so
-- only the service role may (the API: PUT /triggers/{id} with the service-role key).

create table workflow.event_triggers (
  id workflow.object_id primary key,
  workflow_id text not null,
  table_name text not null,                    -- schema-qualified, as regclass prints it
  events text[] not null check (events <@ array['INSERT', 'UPDATE', 'DELETE']
                                and cardinality(events) between 1 and 3),
  condition text check (char_length(condition) <= 2000),   -- a WHEN expression on OLD/NEW
  input_mapping jsonb check (input_mapping is null or jsonb_typeof(input_mapping) = 'object'),
  owner_column text,                           -- the row's column holding the user id
  -- Seed 001's phase: the job starts at the row's start_at_column plus start_offset_s
  -- (negative: before it; "24 hours before appointment_at" is -86400).
  start_at_column text,
  start_offset_s double precision not null default 0
    check (abs(start_offset_s) <= 2592000),
  installed_sql text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table workflow.trigger_failures (
  id bigint generated always as identity primary key,
  trigger_id text not null,
  table_name text not null,
  operation text not null,
  error text not null,
  created_at timestamptz not null default now()
);
create index trigger_failures_created_idx on workflow.trigger_failures (created_at);

alter table workflow.event_triggers enable row level security;
alter table workflow.trigger_failures enable row level security;

-- Triggers install SQL into the project's own tables: the service role's alone (403).
create or replace function workflow.require_service(p_claims jsonb) returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
  if not workflow.claims_service(p_claims) then
    raise sqlstate 'PT403' using detail = 'forbidden',
      message = 'this installs SQL or cron jobs in your database: the service-role key only';
  end if;
end
$$;

-- A row change's job input: with a mapping ({"key": "new.column" | "old.column"}), those
-- columns; without one, {"operation", "table", "new", "old"}.
create or replace function workflow.trigger_input(
  p_mapping jsonb, p_operation text, p_table text, p_new jsonb, p_old jsonb
) returns jsonb
language sql
immutable
set search_path = ''
as $$
  select case when p_mapping is null then
           jsonb_build_object('operation', p_operation, 'table', p_table, 'new', p_new, 'old', p_old)
         else (select coalesce(jsonb_object_agg(m.key, case split_part(m.value, '.', 1)
                                 when 'new' then p_new else p_old end
                                 -> substr(m.value, position('.' in m.value) + 1)), '{}'::jsonb)
               from jsonb_each_text(p_mapping) m)
         end
$$;

-- The trigger every attachment installs (its one argument: the attachment's id).
create or replace function workflow.start_from_row() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_trigger workflow.event_triggers;
  v_new jsonb := case when tg_op <> 'DELETE' then to_jsonb(new) end;
  v_old jsonb := case when tg_op <> 'INSERT' then to_jsonb(old) end;
  v_owner text;
  v_error text;
begin
  select * into v_trigger from workflow.event_triggers where id = tg_argv[0];
  begin
    if v_trigger.id is null then
      raise exception 'trigger % is not attached any more', tg_argv[0];
    end if;
    v_owner := coalesce(v_new, v_old) ->> v_trigger.owner_column;
    perform workflow.start_workflow(
      v_trigger.workflow_id,
      workflow.trigger_input(v_trigger.input_mapping, tg_op, v_trigger.table_name, v_new, v_old),
      v_owner::uuid, null,
      jsonb_build_object('type', 'trigger', 'trigger_id', v_trigger.id,
                         'table', v_trigger.table_name, 'operation', tg_op),
      (coalesce(v_new, v_old) ->> v_trigger.start_at_column)::timestamptz
        + make_interval(secs => v_trigger.start_offset_s));
  exception when others then
    get stacked diagnostics v_error = message_text;
    insert into workflow.trigger_failures (trigger_id, table_name, operation, error)
    values (tg_argv[0], tg_table_schema || '.' || tg_table_name, tg_op, v_error);
  end;
  return null;
end
$$;

-- PUT /triggers/{id}: attach (or re-attach) a workflow to a table. Everything is checked
-- before anything is installed: the table, the events, the columns the mapping and the
-- owner read, and the condition (Postgres compiles it when the trigger is created).
create or replace function workflow.attach_trigger(
  p_trigger_id text, p_workflow_id text, p_table text, p_events text[], p_condition text,
  p_input_mapping jsonb, p_owner_column text, p_claims jsonb,
  p_start_at_column text default null, p_start_offset_s double precision default 0
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_table regclass;
  v_columns text[];
  v_read text;
  v_sql text;
  v_row workflow.event_triggers;
begin
  perform workflow.require_service(p_claims);
  perform workflow.check_object_id(p_trigger_id, 'trigger id');
  perform workflow.lock_object('trigger', p_trigger_id);
  v_table := to_regclass(p_table);
  if v_table is null or p_table !~ '^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$' then
    raise sqlstate 'PT400' using detail = 'bad_request', message = format(
      'table: %s is not a table (name it as schema.table)', to_jsonb(p_table));
  end if;
  if not exists (select 1 from workflow.workflows where id = p_workflow_id) then
    raise sqlstate 'PT400' using detail = 'bad_request', message = format(
      'workflow_id: workflow %s not found', to_jsonb(p_workflow_id));
  end if;
  -- Supabase's own schemas hold secrets (auth.users: password hashes, tokens): the job's
  -- owner could read a whole row copied into its input. Name the columns to copy.
  if p_input_mapping is null and (select n.nspname from pg_catalog.pg_class c
                                  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                                  where c.oid = v_table) in ('auth', 'storage', 'vault') then
    raise sqlstate 'PT400' using detail = 'bad_request', message = format(
      'input_mapping: required on %s (a whole row of it holds secrets): name the columns',
      p_table);
  end if;
  if p_events is null or cardinality(p_events) = 0
     or not p_events <@ array['INSERT', 'UPDATE', 'DELETE'] then
    raise sqlstate 'PT400' using detail = 'bad_request',
      message = 'events: a non-empty list of INSERT, UPDATE, DELETE';
  end if;
  select array_agg(attname::text) into v_columns from pg_catalog.pg_attribute
  where attrelid = v_table and attnum > 0 and not attisdropped;
  for v_read in
    select value from jsonb_each_text(coalesce(p_input_mapping, '{}'::jsonb))
    union all select 'new.' || p_owner_column where p_owner_column is not null
    union all select 'new.' || p_start_at_column where p_start_at_column is not null
  loop
    if v_read !~ '^(new|old)\.' or not substr(v_read, position('.' in v_read) + 1) = any(v_columns)
    then
      raise sqlstate 'PT400' using detail = 'bad_request', message = format(
        'input_mapping/owner_column/start_at_column: %s reads no column of %s (write'
        ' new.<column> or old.<column>)', to_jsonb(v_read), p_table);
    end if;
  end loop;
  if abs(coalesce(p_start_offset_s, 0)) > 2592000 then
    raise sqlstate 'PT400' using detail = 'bad_request',
      message = 'start_offset_s: at most 2592000 seconds (30 days) either way';
  end if;
  -- The condition goes into the statement as written (Postgres compiles it there): one
  -- expression, never a second statement or a way out of the WHEN clause.
  if p_condition ~ ';' or p_condition ~ '\)\s*execute' then
    raise sqlstate 'PT400' using detail = 'bad_request',
      message = 'condition: one SQL expression on OLD/NEW (no ";", no "execute")';
  end if;
  v_sql := format('create trigger %I after %s on %s for each row%s execute function'
                  ' workflow.start_from_row(%L)',
                  'supaflow_' || p_trigger_id, array_to_string(p_events, ' or '), v_table,
                  case when p_condition is not null then format(' when (%s)', p_condition)
                       else '' end, p_trigger_id);
  -- Re-attaching (to this table or another): the trigger installed before goes first.
  for v_read in select table_name from workflow.event_triggers e where e.id = p_trigger_id loop
    if to_regclass(v_read) is not null then
      execute format('drop trigger if exists %I on %s', 'supaflow_' || p_trigger_id, v_read);
    end if;
  end loop;
  execute format('drop trigger if exists %I on %s', 'supaflow_' || p_trigger_id, v_table);
  delete from workflow.event_triggers e where e.id = p_trigger_id;
  begin
    execute v_sql;
  exception when others then
    raise sqlstate 'PT400' using detail = 'bad_request',
      message = 'condition: ' || sqlerrm;
  end;
  if not exists (select 1 from pg_catalog.pg_trigger t
                 where t.tgrelid = v_table and t.tgname = 'supaflow_' || p_trigger_id
                   and t.tgfoid = 'workflow.start_from_row()'::regprocedure and t.tgnargs = 1) then
    raise sqlstate 'PT400' using detail = 'bad_request',
      message = 'condition: it did not install the trigger it describes';
  end if;
  insert into workflow.event_triggers (id, workflow_id, table_name, events, condition,
                                       input_mapping, owner_column, start_at_column,
                                       start_offset_s, installed_sql)
  values (p_trigger_id, p_workflow_id, v_table::text, p_events, p_condition, p_input_mapping,
          p_owner_column, p_start_at_column, coalesce(p_start_offset_s, 0), v_sql)
  returning * into v_row;
  return to_jsonb(v_row) - 'id' || jsonb_build_object('trigger_id', v_row.id);
end
$$;

-- DELETE /triggers/{id}: the trigger is dropped from its table.
create or replace function workflow.detach_trigger(p_trigger_id text, p_claims jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row workflow.event_triggers;
begin
  perform workflow.require_service(p_claims);
  perform workflow.lock_object('trigger', p_trigger_id);
  delete from workflow.event_triggers where id = p_trigger_id returning * into v_row;
  if v_row.id is null then
    raise sqlstate 'PT404' using message = format('trigger %s not found', to_jsonb(p_trigger_id));
  end if;
  if to_regclass(v_row.table_name) is not null then
    execute format('drop trigger if exists %I on %s', 'supaflow_' || v_row.id, v_row.table_name);
  end if;
  return jsonb_build_object('trigger_id', v_row.id, 'detached', true);
end
$$;

-- GET /triggers: every attachment, with the SQL it installed and its recent failures.
create or replace function workflow.list_triggers(p_claims jsonb) returns jsonb
language plpgsql
stable
set search_path = ''
as $$
begin
  perform workflow.require_service(p_claims);
  return coalesce((
    select jsonb_agg(to_jsonb(t) - 'id' || jsonb_build_object(
             'trigger_id', t.id,
             'failures', (select count(*) from workflow.trigger_failures f
                          where f.trigger_id = t.id),
             'last_failure', (select f.error from workflow.trigger_failures f
                              where f.trigger_id = t.id order by f.id desc limit 1))
           order by t.id)
    from workflow.event_triggers t), '[]'::jsonb);
end
$$;
