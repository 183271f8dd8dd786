"""The `supaflow` command (being written)."""


def main() -> None:
    raise SystemExit("supaflow: not built yet")
