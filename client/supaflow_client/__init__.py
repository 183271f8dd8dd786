"""The supaflow client: `Client` and `AsyncClient` for the HTTP API, and the `supaflow`
command (supaflow_client.cli). It talks only HTTP, so it works against the local stack
and a deployed project alike."""
