"""What a supaflow workflow and a transformer may be: the models the server stores them
with and the client and the `supaflow` command check files with, before anything is sent.
It needs pydantic and jsonschema only."""
