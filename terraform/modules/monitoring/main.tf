# The Prometheus/Grafana stack (kube-prometheus-stack). Prometheus selects every PodMonitor,
# ServiceMonitor and PrometheusRule in the cluster, not only the chart's own, so the ones in
# observability/ (the functions' PodMonitor, recording and alerting rules) are picked up.

resource "helm_release" "kube_prometheus_stack" {
  name             = "kube-prometheus-stack"
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "kube-prometheus-stack"
  version          = var.chart_version
  namespace        = var.namespace
  create_namespace = true
  atomic           = true
  wait             = true
  timeout          = 900

  values = [yamlencode({
    prometheus = {
      prometheusSpec = {
        retention                               = var.retention
        podMonitorSelectorNilUsesHelmValues     = false
        serviceMonitorSelectorNilUsesHelmValues = false
        ruleSelectorNilUsesHelmValues           = false
        storageSpec = {
          volumeClaimTemplate = {
            spec = {
              accessModes = ["ReadWriteOnce"]
              resources   = { requests = { storage = var.storage_size } }
            }
          }
        }
      }
    }
    grafana = {
      enabled = true
      admin = {
        existingSecret = var.grafana_admin_secret
        userKey        = "admin-user"
        passwordKey    = "admin-password"
      }
      # Dashboards shipped as ConfigMaps labelled grafana_dashboard=1 (observability/) load
      # from every namespace.
      sidecar = {
        dashboards = {
          enabled         = true
          label           = "grafana_dashboard"
          searchNamespace = "ALL"
        }
      }
    }
  })]
}
