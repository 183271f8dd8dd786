"""The local Supabase-compatible stack: Postgres + pg_cron, PostgREST, a gateway, moto S3."""
