"""The dfs CSI plugin: Kubernetes volumes as quota directories under /volumes/."""
