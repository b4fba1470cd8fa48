-- deriver migration 001: the publication deriver streams from.
-- Creates it when missing and adds every table a pipeline reads, unless the publication already
-- covers it (FOR ALL TABLES, FOR TABLES IN SCHEMA, or an earlier run). Idempotent.
-- Placeholders filled in by `deriver setup`: {{publication}} (a string literal) and
-- {{tables}} (a text[] literal of quoted, schema-qualified table names).
DO $deriver$
DECLARE
  pub    text   := {{publication}};
  tables text[] := {{tables}};
  t      text;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = pub) THEN
    EXECUTE format('CREATE PUBLICATION %I WITH (publish = %L, publish_via_partition_root = true)', pub, 'insert, update, delete, truncate');
    RAISE NOTICE 'created publication %', pub;
  ELSIF NOT (SELECT pubviaroot FROM pg_publication WHERE pubname = pub)
        AND EXISTS (SELECT 1 FROM unnest(tables) u(name) JOIN pg_class c ON c.oid = u.name::regclass WHERE c.relkind = 'p') THEN
    -- Changes of a partitioned table must arrive under the table's own name, not its partitions'.
    EXECUTE format('ALTER PUBLICATION %I SET (publish_via_partition_root = true)', pub);
    RAISE NOTICE 'publication % now publishes partitioned tables via their root', pub;
  END IF;
  FOREACH t IN ARRAY tables LOOP
    IF NOT EXISTS (
      -- By name: casting every published name to regclass fails for a role that may not see
      -- pg_toast.
      SELECT 1 FROM pg_publication_tables pt
        JOIN pg_class c ON c.relname = pt.tablename
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = pt.schemaname
      WHERE pt.pubname = pub AND c.oid = t::regclass
    ) THEN
      EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', pub, t);
      RAISE NOTICE 'added % to publication %', t, pub;
    END IF;
  END LOOP;
END
$deriver$;
