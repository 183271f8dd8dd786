-- The admin functions decide from the caller's claims: who is an admin, which tenant they
-- administer, what a publish races, what a retry resets. Each refusal changes nothing.
begin;
select plan(24);

\set uid '00000000-0000-4000-8000-00000000f001'
\set svc '{"role": "service_role"}'
\set admin_a '{"sub": "00000000-0000-4000-8000-00000000f0a1", "role": "authenticated", "app_metadata": {"tenant_id": "A", "supaflow_role": "admin"}}'
\set admin_b '{"sub": "00000000-0000-4000-8000-00000000f0b1", "role": "authenticated", "app_metadata": {"tenant_id": "B", "supaflow_role": "admin"}}'
\set user_a '{"sub": "00000000-0000-4000-8000-00000000f001", "role": "authenticated", "app_metadata": {"tenant_id": "A"}}'
insert into auth.users (id, email) values (:'uid', 'management@example.test');

-- Who the caller is.
select is(workflow.claims_tenant(:'user_a'), 'A', 'the tenant comes from app_metadata.tenant_id');
select ok(workflow.claims_admin(:'admin_a') and workflow.claims_admin(:'svc')
          and not workflow.claims_admin(:'user_a'), 'admins: supaflow_role admin, the service role');
select ok(workflow.claims_manage(:'admin_a', 'A') and not workflow.claims_manage(:'admin_a', 'B')
          and not workflow.claims_manage(:'admin_a', null) and workflow.claims_manage(:'svc', 'B'),
          'a tenant admin manages their tenant only; the service role every tenant');
update workflow.config set tenant_claim = '{org}';
select is(workflow.claims_tenant('{"org": "X", "app_metadata": {"tenant_id": "A"}}'), 'X',
          'the tenant claim is configurable');
update workflow.config set tenant_claim = default;

-- Drafts and publishing.
\set def '{"output": "$.steps.a.output", "input_schema": null, "steps": []}'
select (:'def'::jsonb || jsonb_build_object('steps', jsonb_build_array(
  :'step'::jsonb || '{"id": "a", "transformer": "transform", "depends_on": []}'))) as good \gset
select throws_ok(format('select workflow.put_draft(%L, null, %L, null, %L)', 'tap-wf', :'good',
                        :'user_a'), 'PT403', null, 'a user cannot put a draft');
select throws_ok(format('select workflow.put_draft(%L, null, %L, null, %L)', 'tap-wf',
                        :'good'::jsonb #- '{steps,0,retry}', :'admin_a'), 'PT400', null,
                 'a draft not in normalised form is refused');
select throws_ok(format('select workflow.put_draft(%L, null, %L, null, %L)', 'tap-wf',
                        jsonb_set(:'good', '{steps,0,transformer}', '"nope"'), :'admin_a'),
                 'PT422', null, 'a draft using an unknown transformer is refused');
select throws_ok(format('select workflow.put_draft(%L, null, %L, %L, %L)', 'tap-wf', :'good', 'B',
                        :'admin_a'), 'PT403', null, 'a tenant admin cannot put into another tenant');
select is(workflow.put_draft('tap-wf', 'd', :'good', null, :'admin_a') ->> 'tenant_id', 'A',
          'a tenant admin''s draft is their tenant''s');
select throws_ok($$select workflow.start_job('00000000-0000-4000-8000-00000000f001', 'tap-wf', 1,
                   '{}', null, '{"app_metadata": {"tenant_id": "A"}}')$$, 'PT404', null,
                 'a draft never starts');
select throws_ok(format('select workflow.publish_workflow(%L, null, %L)', 'tap-wf', :'admin_b'),
                 'PT404', null, 'another tenant''s admin does not see the draft');
select throws_ok(format('select workflow.publish_workflow(%L, 3, %L)', 'tap-wf', :'admin_a'),
                 'PT409', null, 'publishing over a version never seen is a conflict');
select is(workflow.publish_workflow('tap-wf', 0, :'admin_a'),
          '{"workflow_id": "tap-wf", "version": 1, "new_version": true}'::jsonb, 'published as v1');
select is((select published_by from workflow.workflow_versions where workflow_id = 'tap-wf'),
          '00000000-0000-4000-8000-00000000f0a1', 'the version says who published it');
select throws_ok(format('select workflow.publish_workflow(%L, 1, %L)', 'tap-wf', :'admin_a'),
                 'PT409', null, 'without a draft there is nothing to publish');
select throws_ok($$select workflow.start_job('00000000-0000-4000-8000-00000000f001', 'tap-wf', 1,
                   '{}', null, '{"app_metadata": {"tenant_id": "B"}}')$$, 'PT404', null,
                 'another tenant''s user cannot start it');

select is(workflow.put_draft('tap-t', null, :'good', 'A', :'svc') ->> 'tenant_id', 'A',
          'the service role puts a draft into a tenant');
select throws_ok(format('select workflow.put_draft(%L, null, %L, %L, %L)', 'tap-t', :'good', 'B',
                        :'svc'), 'PT409', null, 'and a draft, like a workflow, never changes tenant');

-- What users and admins are shown.
select is(jsonb_array_length(workflow.describe_workflows(:'user_a', 'tap-wf')), 1,
          'a user of the tenant sees it');
select ok(not (workflow.describe_workflows(:'user_a', 'tap-wf') -> 0 ? 'definition')
          and workflow.describe_workflows(:'admin_a', 'tap-wf') -> 0 -> 'versions' -> 0 ->> 'version' = '1',
          'users see what a form needs, admins the definition and versions');

-- Retry.
select workflow.start_job(:'uid', 'tap-wf', 1, '{}', null, :'user_a') ->> 'job_id' as job \gset
select throws_ok(format('select workflow.retry_job(%L, %L)', :'job', :'user_a'), 'PT409', null,
                 'a running job is not retried');
select workflow.fail_job(:'job', 'broken');
select throws_ok(format('select workflow.retry_job(%L, %L)', :'job', :'admin_b'), 'PT404', null,
                 'another tenant''s admin cannot retry it');
select is(workflow.retry_job(:'job', :'admin_a') - 'kick',
          jsonb_build_object('job_id', :'job'::uuid, 'status', 'pending', 'retried_steps', '["a"]'::jsonb),
          'its tenant''s admin retries it');
select results_eq(format($$select status, attempt, next_attempt_at <= now() from workflow.job_steps
                          where job_id = %L$$, :'job'),
                  $$values ('ready', 0, true)$$, 'the failed step is ready again, attempts restart');

select * from finish();
rollback;
