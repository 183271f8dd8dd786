-- Inbound webhooks (DESIGN.md section 11, seed 004): POST /webhooks/{id} starts the
-- webhook's workflow once per delivery id, after the function verified the signature
-- with the webhook's secret. Admins manage them (PUT/GET/DELETE /webhooks): a webhook
-- belongs to its workflow's tenant, and its jobs with it.

create table workflow.webhooks (
  id workflow.object_id primary key,
  workflow_id text not null,
  tenant_id text,
  -- How senders sign: Standard Webhooks (webhook-id/-timestamp/-signature), GitHub
  -- (X-Hub-Signature-256), Stripe (Stripe-Signature).
  signature text not null check (signature in ('standard', 'github', 'stripe')),
  -- The signing secret. Readable by the service role only (no policy, no grant).
  secret text not null check (char_length(secret) between 16 and 200),
  -- How old a signed timestamp may be (standard, stripe), in seconds.
  tolerance_s integer not null default 300 check (tolerance_s between 1 and 3600),
  -- Request headers (lower case) copied into the job's input.
  headers text[] not null default '{}' check (cardinality(headers) <= 20),
  -- A mapping from {"body", "headers", "delivery_id", "webhook_id"} to the input
  -- (shared.webhooks applies it); null: that object is the input.
  input_mapping jsonb,
  owner uuid references auth.users (id) on delete cascade,
  status text not null default 'active' check (status in ('active', 'paused')),
  last_triggered_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
alter table workflow.webhooks enable row level security;

-- Each delivery id starts at most one job: a replay finds its row.
create table workflow.webhook_deliveries (
  webhook_id text not null references workflow.webhooks (id) on delete cascade,
  -- The delivery id, or for GitHub (whose id is not signed) the body's signature.
  delivery_id text not null check (char_length(delivery_id) between 1 and 200),
  job_id uuid not null,
  received_at timestamptz not null default now(),
  primary key (webhook_id, delivery_id)
);
alter table workflow.webhook_deliveries enable row level security;

-- What the receiving function needs to verify a delivery; null for an unknown id.
create or replace function workflow.webhook_for_delivery(p_webhook_id text) returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object('signature', w.signature, 'secret', w.secret,
                            'tolerance_s', w.tolerance_s, 'headers', to_jsonb(w.headers),
                            'input_mapping', w.input_mapping)
  from workflow.webhooks w where w.id = p_webhook_id
$$;

-- A verified delivery: refused while paused (409) or replayed (409, naming its job);
-- else its job, started for the owner or nobody (origin webhook), and the delivery kept.
-- p_dedup_key: what makes a delivery the same one, when its id is not signed (GitHub's
-- signature of the body); by default the delivery id.
create or replace function workflow.receive_webhook(
  p_webhook_id text, p_delivery_id text, p_input jsonb, p_dedup_key text default null
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_webhook workflow.webhooks;
  v_job uuid;
  v_result jsonb;
begin
  select * into v_webhook from workflow.webhooks where id = p_webhook_id for update;
  if v_webhook.id is null then
    raise sqlstate 'PT404' using message = format('webhook %s not found', to_jsonb(p_webhook_id));
  end if;
  if v_webhook.status = 'paused' then
    raise sqlstate 'PT409' using detail = 'webhook_paused',
      message = 'this webhook is paused: deliveries start nothing until it is resumed';
  end if;
  select d.job_id into v_job from workflow.webhook_deliveries d
  where d.webhook_id = p_webhook_id and d.delivery_id = coalesce(p_dedup_key, p_delivery_id);
  if v_job is not null then
    raise sqlstate 'PT409' using detail = 'duplicate_delivery', message = format(
      'delivery %s was received before and started job %s', to_jsonb(p_delivery_id), v_job);
  end if;
  v_result := workflow.start_workflow(
    v_webhook.workflow_id, p_input, v_webhook.owner, null,
    jsonb_build_object('type', 'webhook', 'webhook_id', v_webhook.id,
                       'delivery_id', p_delivery_id));
  insert into workflow.webhook_deliveries (webhook_id, delivery_id, job_id)
  values (p_webhook_id, coalesce(p_dedup_key, p_delivery_id), (v_result ->> 'job_id')::uuid);
  update workflow.webhooks set last_triggered_at = now() where id = p_webhook_id;
  return v_result;
end
$$;

-- PUT /webhooks/{id}: create or replace. The secret is p_secret when given; else a new
-- webhook, or p_rotate, takes p_new_secret (random, from the function); else it is kept.
-- The answer holds the secret only when this call set it: it is shown once.
create or replace function workflow.put_webhook(
  p_webhook_id text, p_workflow_id text, p_signature text, p_secret text, p_new_secret text,
  p_rotate boolean, p_tolerance_s integer, p_headers text[], p_input_mapping jsonb,
  p_owner uuid, p_status text, p_claims jsonb
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_existing workflow.webhooks;
  v_workflow workflow.workflows;
  v_tenant text;
  v_secret text;
  v_row workflow.webhooks;
begin
  perform workflow.require_admin(p_claims);
  perform workflow.check_object_id(p_webhook_id, 'webhook id');
  perform workflow.lock_object('webhook', p_webhook_id);
  select * into v_existing from workflow.webhooks where id = p_webhook_id;
  if v_existing.id is not null then
    perform workflow.require_manage(p_claims, v_existing.tenant_id,
                                    format('webhook %s', to_jsonb(p_webhook_id)));
  end if;
  select * into v_workflow from workflow.workflows where id = p_workflow_id;
  if v_workflow.id is null or not workflow.claims_manage(p_claims, v_workflow.tenant_id) then
    raise sqlstate 'PT400' using detail = 'bad_request', message = format(
      'workflow_id: workflow %s not found', to_jsonb(p_workflow_id));
  end if;
  v_tenant := v_workflow.tenant_id;
  if v_existing.id is not null and v_tenant is distinct from v_existing.tenant_id then
    raise sqlstate 'PT409' using detail = 'tenant_conflict', message = format(
      'webhook %s belongs to tenant %s, and never changes tenant', to_jsonb(p_webhook_id),
      coalesce(to_jsonb(v_existing.tenant_id), '"(global)"'));
  end if;
  if p_owner is not null and not exists (
      select 1 from auth.users u where u.id = p_owner
        and (workflow.claims_service(p_claims) or workflow.claims_tenant(jsonb_build_object(
               'app_metadata', u.raw_app_meta_data, 'user_metadata', u.raw_user_meta_data))
             is not distinct from v_tenant)) then
    raise sqlstate 'PT400' using detail = 'bad_request', message = 'owner: no such user';
  end if;
  if p_secret is null and p_signature = 'stripe'
     and (v_existing.id is null or v_existing.signature <> 'stripe') then
    raise sqlstate 'PT400' using detail = 'bad_request',
      message = 'secret: Stripe signs with the endpoint secret it shows you (whsec_...): give it';
  end if;
  v_secret := case when p_secret is not null then p_secret
                   when v_existing.id is null or p_rotate then p_new_secret
                   else v_existing.secret end;
  insert into workflow.webhooks as w (id, workflow_id, tenant_id, signature, secret,
                                      tolerance_s, headers, input_mapping, owner, status)
  values (p_webhook_id, p_workflow_id, v_tenant, p_signature, v_secret,
          coalesce(p_tolerance_s, 300), coalesce(p_headers, '{}'), p_input_mapping, p_owner,
          coalesce(p_status, 'active'))
  on conflict (id) do update set workflow_id = excluded.workflow_id,
    signature = excluded.signature, secret = excluded.secret,
    tolerance_s = excluded.tolerance_s, headers = excluded.headers,
    input_mapping = excluded.input_mapping, owner = excluded.owner,
    status = excluded.status, updated_at = now()
  returning * into v_row;
  return workflow.describe_webhook(v_row) || jsonb_build_object(
    'created', v_existing.id is null,
    'secret', case when v_secret is distinct from v_existing.secret then v_secret end);
end
$$;

-- A webhook as the API shows it: everything but the secret.
create or replace function workflow.describe_webhook(p_webhook workflow.webhooks) returns jsonb
language sql
immutable
set search_path = ''
as $$
  select to_jsonb(p_webhook) - 'id' - 'secret' || jsonb_build_object(
    'webhook_id', p_webhook.id, 'path', '/webhooks/' || p_webhook.id)
$$;

-- DELETE /webhooks/{id}: its deliveries go with it.
create or replace function workflow.delete_webhook(p_webhook_id text, p_claims jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_existing workflow.webhooks;
begin
  perform workflow.require_admin(p_claims);
  perform workflow.lock_object('webhook', p_webhook_id);
  select * into v_existing from workflow.webhooks where id = p_webhook_id;
  if v_existing.id is null then
    raise sqlstate 'PT404' using message = format('webhook %s not found', to_jsonb(p_webhook_id));
  end if;
  perform workflow.require_manage(p_claims, v_existing.tenant_id,
                                  format('webhook %s', to_jsonb(p_webhook_id)));
  delete from workflow.webhooks where id = p_webhook_id;
  return jsonb_build_object('webhook_id', p_webhook_id, 'deleted', true);
end
$$;

-- GET /webhooks: those the caller administers.
create or replace function workflow.list_webhooks(p_claims jsonb) returns jsonb
language plpgsql
stable
set search_path = ''
as $$
begin
  perform workflow.require_admin(p_claims);
  return coalesce((
    select jsonb_agg(workflow.describe_webhook(w) order by w.id)
    from workflow.webhooks w
    where workflow.claims_manage(p_claims, w.tenant_id)), '[]'::jsonb);
end
$$;
