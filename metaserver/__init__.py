"""The dfs metaserver: namespace, chunk maps, quotas and sessions in LMDB."""
