-- deriver migration 002 (optional, `deriver setup --grant-to ROLE`): the least privilege a
-- deriver role needs on the source: REPLICATION, and USAGE + SELECT on the tables it derives from.
-- Run by an administrator; idempotent. Placeholders: {{role}} (a quoted identifier) and {{tables}}.
DO $deriver$
DECLARE
  tables text[] := {{tables}};
  t      text;
BEGIN
  EXECUTE 'ALTER ROLE ' || {{role}} || ' WITH REPLICATION';
  FOREACH t IN ARRAY tables LOOP
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s',
                   (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = t::regclass),
                   {{role}});
    EXECUTE format('GRANT SELECT ON %s TO %s', t, {{role}});
  END LOOP;
END
$deriver$;
