"""The chunk server: replicas of chunks on local disk, CRC32C per 64 KiB block,
replication from peers, scrubbing, and the link to the metaserver."""
