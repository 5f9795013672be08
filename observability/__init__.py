"""Prometheus rules, Grafana dashboards and monitoring manifests of KubeSentiment (data, mostly)."""
