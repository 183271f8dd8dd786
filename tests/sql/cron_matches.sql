-- workflow.cron_matches: a schedule outside UTC is read by this, not by pg_cron, so it
-- must read five-field expressions as pg_cron (vixie cron) does.
begin;
select plan(19);

select ok(workflow.cron_matches('30 9 * * mon-fri', '2026-12-03 09:30'), 'names and ranges: a Thursday');
select ok(not workflow.cron_matches('30 9 * * mon-fri', '2026-12-05 09:30'), 'not a Saturday');
select ok(not workflow.cron_matches('30 9 * * mon-fri', '2026-12-03 09:31'), 'minute precision');
select ok(workflow.cron_matches('0 0 * * 7', '2026-12-06 00:00'), 'day of week 7 is Sunday');
select ok(workflow.cron_matches('0 0 * * 5-7', '2026-12-06 00:00'), 'a range through 7 holds Sunday');
select ok(workflow.cron_matches('*/15 * * * *', '2026-12-06 10:45')
          and not workflow.cron_matches('*/15 * * * *', '2026-12-06 10:50'), 'steps over *');
select ok(workflow.cron_matches('1-10/3 * * * *', '2026-12-06 10:07')
          and not workflow.cron_matches('1-10/3 * * * *', '2026-12-06 10:08')
          and workflow.cron_matches('1-10/3 * * * *', '2026-12-06 10:10'), 'steps over a range');
select ok(workflow.cron_matches('5,35 8,20 * * *', '2026-12-06 20:35'), 'lists');
select ok(workflow.cron_matches('0 12 1 JAN *', '2027-01-01 12:00')
          and not workflow.cron_matches('0 12 1 jan *', '2027-02-01 12:00'), 'month names, any case');
select ok(workflow.cron_matches('0 0 1 * mon', '2026-12-07 00:00')
          and workflow.cron_matches('0 0 1 * mon', '2026-12-01 00:00'),
          'both day fields restricted: either matches (the 1st, or a Monday)');
select ok(not workflow.cron_matches('0 0 */2 * mon', '2026-12-08 00:00')
          and workflow.cron_matches('0 0 */2 * mon', '2026-12-07 00:00')
          and not workflow.cron_matches('0 0 */2 * mon', '2026-12-09 00:00'),
          'a day field starting with * is not a restriction: both must match');
select ok(workflow.cron_matches('@daily', '2026-12-06 00:00')
          and not workflow.cron_matches('@daily', '2026-12-06 01:00'), '@daily is 0 0 * * *');
select ok(workflow.cron_matches('@weekly', '2026-12-06 00:00'), '@weekly is Sunday midnight');
select ok(workflow.cron_matches('  0   9 * *   *  ', '2026-12-06 09:00'), 'blanks around and between');
select is(workflow.cron_matches('5/10 * * * *', '2026-12-06 00:05'), null, 'a step after one number: not read');
select is(workflow.cron_matches('* * * * * *', '2026-12-06 00:05'), null, 'six fields: not read');
select is(workflow.cron_matches('0 0 * * sunday', '2026-12-06 00:00'), null, 'long names: not read');

select is(workflow.cron_wake_expression('15 9 * * mon', 'Europe/Paris'), '15 * * * *',
          'a whole-hour zone wakes on the minute, each hour');
select is(workflow.cron_wake_expression('15 9 * * mon', 'Asia/Kolkata'), '* * * * *',
          'a half-hour zone wakes each minute');

select * from finish();
rollback;
