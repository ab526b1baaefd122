-- deploy/sql/roles.sql: the least-privilege login role `dw_worker` for the dw_pipelines worker
-- (the outbox sensor and the ingestion runs: DW_DATABASE_URL / DW_WAREHOUSE_URL).
--
-- Run it ONCE PER DATABASE, after `dw-pipelines db upgrade`, as the database owner or another
-- administrator (a superuser, or a role with CREATEROLE that owns the database):
--
--   psql -X -v ON_ERROR_STOP=1 -v dw_worker_password="$DW_WORKER_PASSWORD" \
--        -f deploy/sql/roles.sql "postgresql://admin@db-host:5432/dw"
--
-- The password is never written in this file. Options on the psql command line are visible in
-- the process list, so on shared machines put `\set dw_worker_password '...'` in a private file
-- and pass it first: `psql -X -f /run/secrets/dw_worker.psql -f deploy/sql/roles.sql URL`. The
-- value may also be a SCRAM-SHA-256 verifier (`SCRAM-SHA-256$4096:...`): the server stores it as
-- is, so the plain text never reaches the server or its logs.
--
-- Optional psql variable:
--   dw_admin_role  role that owns dw_staging/dw_storage and creates tables there besides the
--                  worker (default: the role running this script); the default privileges below
--                  apply to tables it creates.
--
-- Run it again after every `dw-pipelines db upgrade`: grants name the tables one by one, and a
-- migration that adds or recreates a table leaves dw_worker without privileges on it (add the
-- new table's grants here first).
--
-- Idempotent: every run converges the role, its attributes, settings and grants to what is
-- written here (extra privileges granted to dw_worker by hand on these objects are revoked), so
-- it is safe to run again, e.g. to rotate the password. All of it is one transaction.
--
-- The role is cluster-wide; running the script in a second database reuses it (and resets its
-- password and settings, which are global to the role).
--
-- dw_worker CAN: connect to this database; read/write the outbox (SELECT, INSERT, UPDATE,
-- DELETE); append to and read the audit trail (SELECT, INSERT, sequence USAGE); create tables in
-- dw_staging and dw_storage (it owns them) and run DML on every table there.
-- dw_worker CANNOT: create anything in public or create schemas; alter, drop or truncate the
-- outbox, the audit table or the Alembic version table; update or delete audit rows; touch any
-- other table; create databases or roles; SET ROLE to any other role.
--
-- NOT covered by SQL in this database:
-- * Other databases of the server: every new database grants CONNECT to PUBLIC, so dw_worker can
--   connect to any database that still has that default (it sees nothing there beyond what
--   PUBLIC may see). Restrict it in pg_hba.conf (first match wins):
--       hostssl  dw   dw_worker  10.0.0.0/8  scram-sha-256
--       host     all  dw_worker  all         reject
--   or REVOKE CONNECT ... FROM PUBLIC in those databases too (as done below for this one).
-- * The Dagster instance storage (DAGSTER_PG_URL) needs a role and database of its own: it
--   creates its tables in public, which dw_worker may not.

\set ON_ERROR_STOP on

-- ------------------------------------------------------------------------ variables and checks

\if :{?dw_worker_password}
\else
DO $$ BEGIN
  RAISE EXCEPTION 'roles.sql: no password given; run psql with -v dw_worker_password=... '
    '(see the header of deploy/sql/roles.sql)';
END $$;
\endif
SELECT length(:'dw_worker_password') = 0 AS dw_worker_password_is_empty \gset
\if :dw_worker_password_is_empty
DO $$ BEGIN
  RAISE EXCEPTION 'roles.sql: dw_worker_password is empty';
END $$;
\endif

\if :{?dw_admin_role}
\else
SELECT current_user AS dw_admin_role \gset
\endif

BEGIN;

-- Grants below name these objects: refuse a database that was never migrated.
DO $$
BEGIN
  IF to_regclass('public.dw_ingestion_outbox') IS NULL
     OR to_regclass('public.dw_ingestion_audit') IS NULL
     OR to_regclass('public.dw_pipelines_alembic_version') IS NULL THEN
    RAISE EXCEPTION 'roles.sql: database % has no dw_pipelines tables in schema public; '
      'run "dw-pipelines db upgrade" against it first', current_database();
  END IF;
END $$;

-- ------------------------------------------------------------------------------------ the role

-- Created without privileges of any kind: it logs in, and owns only what it creates in the
-- warehouse schemas. NOINHERIT: should someone grant it membership in another role, it would
-- not silently gain that role's privileges.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'dw_worker') THEN
    BEGIN
      CREATE ROLE dw_worker
        LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      -- Created meanwhile by this script running in another database of the server.
      NULL;
    END;
  END IF;
  -- The role is one row of the cluster-wide pg_authid: two runs of this script (in two
  -- databases) changing it at once fail with "tuple concurrently updated". Locking the row first
  -- makes a second run wait for the first to commit. Only superusers may read pg_authid; other
  -- administrators skip the lock (and simply run the script again should that error appear).
  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
    PERFORM FROM pg_catalog.pg_authid WHERE rolname = 'dw_worker' FOR UPDATE;
  END IF;
  -- Changing these three needs a superuser (PostgreSQL 15), so touch them only if they drifted.
  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'dw_worker'
             AND (rolsuper OR rolreplication OR rolbypassrls)) THEN
    ALTER ROLE dw_worker NOSUPERUSER NOREPLICATION NOBYPASSRLS;
  END IF;
END $$;

-- Re-asserted on every run, with the (new) password. psql quotes the value: any character is safe.
ALTER ROLE dw_worker WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT
  PASSWORD :'dw_worker_password';

-- A membership would let it SET ROLE to another role's privileges (NOINHERIT does not stop
-- that): the worker role belongs to no other role.
DO $$
DECLARE
  granted name;
BEGIN
  FOR granted IN
    SELECT r.rolname FROM pg_catalog.pg_auth_members m
    JOIN pg_catalog.pg_roles r ON r.oid = m.roleid
    WHERE m.member = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'dw_worker')
  LOOP
    RAISE NOTICE 'roles.sql: revoking membership of dw_worker in role %', granted;
    EXECUTE format('REVOKE %I FROM dw_worker', granted);
  END LOOP;
END $$;

-- Role-level limits, for every database. They are defaults, not hard limits: a session (or the
-- role itself, with ALTER ROLE) may set other values; they guard against accidents, not against
-- a compromised worker. RESET ALL first, so that a re-run converges on exactly these; settings
-- for one database (ALTER ROLE dw_worker IN DATABASE dw SET ...) take precedence and are kept.
ALTER ROLE dw_worker RESET ALL;
-- * idle_in_transaction_session_timeout: a session idling inside an open transaction holds back
--   the xmin horizon, so VACUUM cannot remove the dead row versions that every outbox status
--   change leaves behind and the queue table and its indexes bloat; it may also hold row locks a
--   claim or transition waits for. The worker never pauses inside a transaction, so one minute
--   only ever ends a stuck session (the engine's pool_pre_ping replaces the dead connection).
ALTER ROLE dw_worker SET idle_in_transaction_session_timeout = '1min';
-- * statement_timeout: ends runaway statements. Generous because staging a file is ONE
--   `COPY ... FROM STDIN` that lasts while the whole file is read and validated; raise it for
--   very large files (ALTER ROLE dw_worker IN DATABASE ... SET statement_timeout = ...).
ALTER ROLE dw_worker SET statement_timeout = '30min';
-- * lock_timeout: a run waiting on a lock (the DDL advisory lock, an outbox row held by another
--   transaction, a storage row another promotion is upserting) fails instead of queueing
--   forever; the error is transient, so Dagster's RetryPolicy retries the step.
ALTER ROLE dw_worker SET lock_timeout = '1min';

-- ---------------------------------------------------------------------------------- database

-- CONNECT: by default PUBLIC (every role of the server) may connect to every database. Revoking
-- that here keeps other login roles out of this database, and means dw_worker gets in by this
-- explicit grant only. CAREFUL: this affects EVERY non-superuser role that connected to this
-- database through PUBLIC (applications, BI readers, monitoring): grant them CONNECT explicitly,
-- e.g. `GRANT CONNECT ON DATABASE dw TO bi_reader;`. The owner and superusers keep access.
-- (TEMPORARY stays granted to PUBLIC: temp tables are session-private; revoke it too if wanted.
-- Without it, large merge jobs cannot rewrite their table and always merge in place.)
REVOKE CONNECT ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"DBNAME" TO dw_worker;

-- No CREATE on the database: it would let dw_worker create schemas of its own. The worker does
-- not need it (both warehouse schemas are created below; it creates a schema only when one is
-- missing). Revoked on every run, so a grant made by hand goes again.
REVOKE CREATE ON DATABASE :"DBNAME" FROM dw_worker;

-- ----------------------------------------------------------------------------- schema public

-- public holds the outbox, the audit trail and the Alembic version table, all owned by the
-- administrator who ran the migrations. Nobody else may create objects there: a role that can
-- would be able to plant a table or function that shadows ours for sessions whose search_path
-- puts public first. PostgreSQL 15 already revokes CREATE from PUBLIC on new databases, but
-- databases upgraded from older versions keep it: explicit, both for PUBLIC and for dw_worker.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM dw_worker;
-- USAGE: needed to reach the outbox and audit tables at all (explicit, in case an administrator
-- revoked it from PUBLIC).
GRANT USAGE ON SCHEMA public TO dw_worker;

-- Start from nothing on public's tables and sequences: whatever was granted to dw_worker by hand
-- goes; only the grants below remain. (Privileges granted to PUBLIC apply to every role, this
-- one included; this script does not change them.)
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM dw_worker;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM dw_worker;

-- Outbox: the sensor reads and claims rows (SELECT ... FOR UPDATE SKIP LOCKED, UPDATE), runs move
-- them through their states (UPDATE), gateways and the CLI enqueue (INSERT ... ON CONFLICT DO
-- NOTHING RETURNING, which also needs SELECT), `dw-pipelines outbox prune` deletes old
-- COMPLETED rows (DELETE). No TRUNCATE (it would bypass row-level locking and wipe the queue), no
-- REFERENCES/TRIGGER; ALTER and DROP belong to the owner only.
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.dw_ingestion_outbox TO dw_worker;

-- Audit trail: append-only. INSERT for every state change, SELECT for `outbox show` and for the
-- run reading back its STAGED event. No UPDATE, DELETE or TRUNCATE: the worker cannot rewrite
-- history.
GRANT SELECT, INSERT ON TABLE public.dw_ingestion_audit TO dw_worker;
-- The audit id is a bigserial: INSERT calls nextval() on its sequence, which needs USAGE.
SELECT pg_catalog.pg_get_serial_sequence('public.dw_ingestion_audit', 'id') AS dw_audit_id_seq \gset
GRANT USAGE ON SEQUENCE :dw_audit_id_seq TO dw_worker;

-- public.dw_pipelines_alembic_version: nothing. The worker never reads it; migrations run as the
-- administrator (the REVOKE ALL above already covers it; this line documents the intent).
REVOKE ALL ON TABLE public.dw_pipelines_alembic_version FROM dw_worker;

-- -------------------------------------------------------------------------- warehouse schemas

-- Created here, owned by the administrator, so dw_worker can neither drop them nor change who may
-- use them.
CREATE SCHEMA IF NOT EXISTS dw_staging AUTHORIZATION :"dw_admin_role";
CREATE SCHEMA IF NOT EXISTS dw_storage AUTHORIZATION :"dw_admin_role";
-- Converge a schema created earlier by someone else (e.g. by the worker itself) to that owner.
ALTER SCHEMA dw_staging OWNER TO :"dw_admin_role";
ALTER SCHEMA dw_storage OWNER TO :"dw_admin_role";

-- USAGE to reach the tables, CREATE because the worker creates each dataset's staging and storage
-- table (with its indexes) on first use; it owns the tables it creates, so it can load, promote
-- and clean them.
GRANT USAGE, CREATE ON SCHEMA dw_staging, dw_storage TO dw_worker;

-- Tables that already exist there and were created by someone else (e.g. by a worker that ran as
-- the administrator before this role existed): full DML for loading staging (COPY needs INSERT),
-- deleting a job's rows and promoting (INSERT ... SELECT, upsert = INSERT + UPDATE + SELECT).
-- TRUNCATE, ALTER and DROP stay with their owner.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA dw_staging, dw_storage TO dw_worker;
-- Identity/serial columns of such tables need their sequences for INSERT.
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA dw_staging, dw_storage TO dw_worker;

-- Tables (and sequences) the administrator creates there LATER get the same grants
-- automatically. Default privileges belong to the creating role: if another role creates tables
-- there, repeat with FOR ROLE that_role (or pass -v dw_admin_role=that_role).
ALTER DEFAULT PRIVILEGES FOR ROLE :"dw_admin_role" IN SCHEMA dw_staging, dw_storage
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO dw_worker;
ALTER DEFAULT PRIVILEGES FOR ROLE :"dw_admin_role" IN SCHEMA dw_staging, dw_storage
  GRANT USAGE, SELECT ON SEQUENCES TO dw_worker;

COMMIT;
