"""The operator's side: the `tf-lxd-spawner` command (cli, doctor, orphans, home commands) and
the users' snapshots service."""
