"""The common library of every supaflow function (deployed as a Lambda layer)."""
